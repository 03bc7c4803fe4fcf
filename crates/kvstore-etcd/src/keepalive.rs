//! One `LeaseKeepAlive` stream per store, shared by the keep-alives of every lease, as
//! etcd's Go client (clientv3's lessor) does.
//!
//! A stream per refresh costs a stream set-up, an extra keep-alive and a tear-down each
//! time: with thousands of leases, thousands of streams a second on the client and the
//! server. Instead a task per store (started by its first keep-alive, ended when the store
//! is closed or its last handle dropped) owns one stream:
//!
//! - [`KeepAlives::renew`] queues the lease with a oneshot and waits for the answer
//!   about it: etcd answers a stream's requests one by one, in order, each with the lease
//!   ID it was asked about.
//! - Callers asking about a lease whose request is queued but not sent yet share that
//!   request and its answer. None shares a request sent before it asked: a lease's
//!   remaining life is counted from when its keep-alive was sent ([contract §4](kvstore_core::contract#4-leases-and-ttl)),
//!   so the answer must come from a renewal after that.
//! - The stream is opened when there is something to send and none is open. A failed
//!   open fails every queued request with its error (callers send again what provably
//!   never left, as for any etcd request); an open refused for an expired auth token
//!   authenticates again once and retries.
//! - When the stream breaks (member killed, connection reset, the server ending it), the
//!   requests sent on it fail with that error; those not sent yet stay queued and go out
//!   on a new stream. A stream refused for an expired auth token authenticates again and
//!   sends its unanswered requests again (they were refused, not applied).
//! - A stream whose oldest request has gone unanswered for the request timeout is
//!   dropped as stuck, so the next request opens a new one (maybe on another member).
//! - Requests whose callers all gave up (timed out, cancelled) are dropped unsent.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use etcd_client::{Client, LeaseClient, LeaseKeepAliveResponse, LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{is_expired_token_status, is_lease_not_found};

/// The most requests taken from the task's queue at once, before it turns to the stream.
const MAX_BATCH: usize = 1024;

/// What one keep-alive came to.
#[derive(Clone, Debug)]
pub(crate) enum Answer {
    /// etcd's answer: the lease's new TTL in seconds, ≤ 0 when the lease does not exist.
    Ttl(i64),
    /// The stream could not be opened, or broke after the request was sent on it.
    Failed(Arc<etcd_client::Error>),
    /// etcd ended the stream, without an error, after the request was sent on it.
    Ended,
    /// No answer within the request timeout: opening the stream or the request stuck.
    TimedOut,
    /// The task is gone: the store was closed, or the runtime that ran it shut down.
    Gone,
}

/// What the task needs from its store, taken when it starts.
pub(crate) struct Link {
    /// For authenticating again.
    pub(crate) client: Client,
    /// Opens the stream.
    pub(crate) lease: LeaseClient,
    /// How long opening the stream, or a request sent on it, may take.
    pub(crate) request_timeout: Duration,
    /// Cancelled when the store closes: the task ends.
    pub(crate) shutdown: CancellationToken,
}

/// The keep-alive task of one store, shared by the store's clones.
#[derive(Debug, Default)]
pub(crate) struct KeepAlives {
    /// Where requests go; `None` until the first keep-alive.
    requests: Mutex<Option<mpsc::UnboundedSender<Request>>>,
}

impl KeepAlives {
    /// Keep `lease` alive once on the shared stream: etcd's answer, or why there is none.
    ///
    /// Starts the task if it is not running (`link` makes what it needs): on the first
    /// keep-alive, and again if the runtime it ran on has shut down. The task settles
    /// every request in bounded time (opening the stream, and each request sent on it,
    /// within the request timeout); callers bound their wait by their own deadline.
    pub(crate) async fn renew(&self, lease: i64, link: impl FnOnce() -> Link) -> Answer {
        let (reply, answer) = oneshot::channel();
        let request = Request { lease, reply };
        {
            let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
            let unsent = match requests.as_ref() {
                Some(sender) => sender.send(request).err().map(|refused| refused.0),
                None => Some(request),
            };
            if let Some(request) = unsent {
                let (sender, receiver) = mpsc::unbounded_channel();
                // The receiver is right here: this cannot fail.
                let _ = sender.send(request);
                tokio::spawn(Task::new(link(), receiver).run());
                *requests = Some(sender);
            }
        }
        answer.await.unwrap_or(Answer::Gone)
    }
}

/// One caller's keep-alive of one lease.
#[derive(Debug)]
struct Request {
    lease: i64,
    reply: oneshot::Sender<Answer>,
}

/// The callers waiting on one request.
type Waiters = Vec<oneshot::Sender<Answer>>;

/// The open stream: requests go out through the keeper, answers come back in order.
struct Stream {
    keeper: LeaseKeeper,
    responses: LeaseKeepAliveStream,
}

/// What woke the task.
enum Event {
    Shutdown,
    Request(Option<Request>),
    Sent(Result<(), etcd_client::Error>),
    Response(Result<Option<LeaseKeepAliveResponse>, etcd_client::Error>),
    Stuck,
}

/// The task that owns a store's keep-alive stream.
struct Task {
    link: Link,
    requests: mpsc::UnboundedReceiver<Request>,
    /// Leases to send, in the order asked; each appears once.
    queue: VecDeque<i64>,
    /// The callers of each queued lease's next request.
    queued: HashMap<i64, Waiters>,
    /// Per lease, the callers of each request sent and not answered yet, oldest first.
    in_flight: HashMap<i64, VecDeque<Waiters>>,
    /// When each unanswered request was sent, oldest first (etcd answers in order).
    sent_at: VecDeque<Instant>,
    stream: Option<Stream>,
    /// Whether the auth token was refreshed since the last answer: once is enough, a
    /// token refused again means the credentials are wrong.
    refreshed: bool,
}

impl Task {
    fn new(link: Link, requests: mpsc::UnboundedReceiver<Request>) -> Task {
        Task {
            link,
            requests,
            queue: VecDeque::new(),
            queued: HashMap::new(),
            in_flight: HashMap::new(),
            sent_at: VecDeque::new(),
            stream: None,
            refreshed: false,
        }
    }

    /// Serve requests until the store closes or every handle on it is gone. Ending drops
    /// every waiting caller's oneshot: they see [`Answer::Gone`].
    async fn run(mut self) {
        let shutdown = self.link.shutdown.clone();
        loop {
            if self.stream.is_none() && self.next_to_send().is_some() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = self.open() => continue,
                }
            }
            match self.next_event().await {
                Event::Shutdown | Event::Request(None) => return,
                Event::Request(Some(request)) => {
                    self.enqueue(request);
                    for _ in 1..MAX_BATCH {
                        match self.requests.try_recv() {
                            Ok(request) => self.enqueue(request),
                            Err(_) => break,
                        }
                    }
                }
                Event::Sent(Ok(())) => self.sent(),
                Event::Sent(Err(error)) => {
                    // The request half is gone: the call ended. The answers half says why,
                    // but may never say it: treat the stream as ended.
                    tracing::debug!(%error, "etcd keep-alive stream closed");
                    self.fail_in_flight(&Answer::Ended);
                }
                Event::Response(Ok(Some(response))) => self.answered(&response),
                Event::Response(Ok(None)) => {
                    tracing::debug!("etcd ended the keep-alive stream");
                    self.fail_in_flight(&Answer::Ended);
                }
                Event::Response(Err(error)) => {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = self.broken(error) => {}
                    }
                }
                Event::Stuck => {
                    tracing::debug!(
                        after = ?self.link.request_timeout,
                        "etcd keep-alive stream stuck; dropping it"
                    );
                    self.fail_in_flight(&Answer::TimedOut);
                }
            }
        }
    }

    /// Wait for the next thing to do: an answer first (it frees the server to go on), then
    /// a request to send, then a new caller.
    async fn next_event(&mut self) -> Event {
        let next = self.next_to_send();
        let stuck_at = self
            .sent_at
            .front()
            .map(|sent| *sent + self.link.request_timeout);
        let Task {
            link,
            requests,
            stream,
            ..
        } = self;
        let (keeper, responses) = match stream {
            Some(Stream { keeper, responses }) => (Some(keeper), Some(responses)),
            None => (None, None),
        };
        tokio::select! {
            biased;
            () = link.shutdown.cancelled() => Event::Shutdown,
            response = receive(responses) => Event::Response(response),
            sent = send(keeper, next) => Event::Sent(sent),
            request = requests.recv() => Event::Request(request),
            () = until(stuck_at) => Event::Stuck,
        }
    }

    /// Open the stream with the first queued lease. etcd-client opens it with one
    /// keep-alive and keeps only the lease ID of the answer, so that lease stays queued
    /// and is sent again for its TTL.
    async fn open(&mut self) {
        while let Some(first) = self.next_to_send() {
            let mut lease = self.link.lease.clone();
            let opened = tokio::time::timeout(self.link.request_timeout, lease.keep_alive(first));
            match opened.await {
                Ok(Ok((keeper, responses))) => {
                    self.stream = Some(Stream { keeper, responses });
                    return;
                }
                // The stream opened, etcd answered that the lease does not exist, and
                // etcd-client closed the stream: answer that, and open with the next.
                Ok(Err(error)) if is_lease_not_found(&error) => self.answer_first(first),
                Ok(Err(error)) if is_expired_token_status(&error) && !self.refreshed => {
                    self.refreshed = true;
                    tracing::debug!("etcd auth token expired; authenticating again");
                    if let Err(refused) = self.refresh_token().await {
                        self.fail_queued(&refused);
                        return;
                    }
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, "opening the etcd keep-alive stream failed");
                    self.fail_queued(&Answer::Failed(Arc::new(error)));
                    return;
                }
                Err(_) => {
                    self.fail_queued(&Answer::TimedOut);
                    return;
                }
            }
        }
    }

    /// The stream failed with `error`: send its unanswered requests again on a new stream
    /// if etcd refused an expired token (once since the last answer), else fail them.
    async fn broken(&mut self, error: etcd_client::Error) {
        if is_expired_token_status(&error) && !self.refreshed {
            self.refreshed = true;
            tracing::debug!("etcd auth token expired on the keep-alive stream");
            if self.refresh_token().await.is_ok() {
                self.stream = None;
                self.sent_at.clear();
                self.requeue_in_flight();
                return;
            }
        }
        tracing::debug!(%error, "etcd keep-alive stream failed");
        self.fail_in_flight(&Answer::Failed(Arc::new(error)));
    }

    /// Authenticate again, within the request timeout.
    async fn refresh_token(&self) -> Result<(), Answer> {
        let refresh = self.link.client.refresh_token();
        match tokio::time::timeout(self.link.request_timeout, refresh).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Answer::Failed(Arc::new(error))),
            Err(_) => Err(Answer::TimedOut),
        }
    }

    /// The first lease in the queue that a caller still waits for, dropping those whose
    /// callers all gave up.
    fn next_to_send(&mut self) -> Option<i64> {
        while let Some(&lease) = self.queue.front() {
            let waited_for = self
                .queued
                .get(&lease)
                .is_some_and(|waiters| waiters.iter().any(|w| !w.is_closed()));
            if waited_for {
                return Some(lease);
            }
            self.queue.pop_front();
            self.queued.remove(&lease);
        }
        None
    }

    /// Add a caller to the lease's queued request, or queue one.
    fn enqueue(&mut self, request: Request) {
        match self.queued.entry(request.lease) {
            Entry::Occupied(mut waiters) => waiters.get_mut().push(request.reply),
            Entry::Vacant(slot) => {
                slot.insert(vec![request.reply]);
                self.queue.push_back(request.lease);
            }
        }
    }

    /// The first queued request went out on the stream.
    fn sent(&mut self) {
        let Some(lease) = self.queue.pop_front() else {
            return;
        };
        let waiters = self.queued.remove(&lease).unwrap_or_default();
        self.in_flight.entry(lease).or_default().push_back(waiters);
        self.sent_at.push_back(Instant::now());
    }

    /// etcd answered the oldest request about the response's lease.
    fn answered(&mut self, response: &LeaseKeepAliveResponse) {
        self.sent_at.pop_front();
        self.refreshed = false;
        let lease = response.id();
        let Some(requests) = self.in_flight.get_mut(&lease) else {
            tracing::debug!(lease, "etcd answered a keep-alive nobody sent");
            return;
        };
        let waiters = requests.pop_front().unwrap_or_default();
        if requests.is_empty() {
            self.in_flight.remove(&lease);
        }
        for waiter in waiters {
            let _ = waiter.send(Answer::Ttl(response.ttl()));
        }
    }

    /// Answer the first queued lease's callers that it does not exist.
    fn answer_first(&mut self, lease: i64) {
        if self.queue.front() == Some(&lease) {
            self.queue.pop_front();
        }
        for waiter in self.queued.remove(&lease).unwrap_or_default() {
            let _ = waiter.send(Answer::Ttl(0));
        }
    }

    /// Drop the stream and give every request sent on it `answer`. Queued requests stay
    /// for the next stream: they never left.
    fn fail_in_flight(&mut self, answer: &Answer) {
        self.stream = None;
        self.sent_at.clear();
        for (_, requests) in self.in_flight.drain() {
            for waiter in requests.into_iter().flatten() {
                let _ = waiter.send(answer.clone());
            }
        }
    }

    /// Give every queued request `answer`.
    fn fail_queued(&mut self, answer: &Answer) {
        self.queue.clear();
        for (_, waiters) in self.queued.drain() {
            for waiter in waiters {
                let _ = waiter.send(answer.clone());
            }
        }
    }

    /// Queue the unanswered requests again, ahead of those never sent.
    fn requeue_in_flight(&mut self) {
        for (lease, requests) in std::mem::take(&mut self.in_flight) {
            let waiters = requests.into_iter().flatten();
            match self.queued.entry(lease) {
                Entry::Occupied(mut queued) => queued.get_mut().extend(waiters),
                Entry::Vacant(slot) => {
                    slot.insert(waiters.collect());
                    self.queue.push_front(lease);
                }
            }
        }
    }
}

/// The next answer on the stream; never, without one.
async fn receive(
    responses: Option<&mut LeaseKeepAliveStream>,
) -> Result<Option<LeaseKeepAliveResponse>, etcd_client::Error> {
    match responses {
        Some(responses) => responses.message().await,
        None => std::future::pending().await,
    }
}

/// Send a keep-alive of `lease`; never, without a stream or a lease. Cancel-safe: a
/// send that loses the race in `select!` was not sent.
async fn send(
    keeper: Option<&mut LeaseKeeper>,
    lease: Option<i64>,
) -> Result<(), etcd_client::Error> {
    match (keeper, lease) {
        (Some(keeper), Some(lease)) => {
            keeper.id = lease;
            keeper.keep_alive().await
        }
        _ => std::future::pending().await,
    }
}

/// Sleep until `deadline`; forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
