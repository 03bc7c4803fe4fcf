//! Keeping secrets out of messages: [`redact_url`].

/// What a secret is replaced with wherever it would be shown.
const MASK: &str = "***";

/// A store URL fit to show in a message, a log or `Debug`: the password of its userinfo
/// replaced with `***`.
///
/// - `redis://user:s3cret@h:6379/0` → `redis://user:***@h:6379/0`
/// - `etcd://u:p@h1:2379,h2:2379/ns` → `etcd://u:***@h1:2379,h2:2379/ns`
/// - `redis://:pw@h` → `redis://:***@h`
/// - a URL without a password (`redis://h:6379`, `redis://user@h`) is returned unchanged.
///
/// The URL is read as a string, not parsed, so anything is accepted, including URLs a
/// URL parser refuses (etcd's comma-separated hosts) and text without a scheme. It errs
/// toward hiding: the userinfo runs from after `scheme://` (or from the start, when the
/// text does not begin with a valid scheme and `://`) to the *last* `@` of the whole
/// text, even past a `/`, `?` or `#` (a password with an unescaped `/` would otherwise
/// end the authority early and show), and the password is the userinfo after its first
/// `:`. An `@` in a query may thus hide a host too: a message then shows less, never a
/// secret. Never panics.
///
/// ```
/// assert_eq!(
///     kvstore_core::redact_url("redis://user:s3cret@h:6379/0"),
///     "redis://user:***@h:6379/0"
/// );
/// ```
#[must_use]
pub fn redact_url(url: &str) -> String {
    let start = match url.split_once("://") {
        Some((scheme, _)) if is_scheme(scheme) => scheme.len() + "://".len(),
        _ => 0,
    };
    let rest = &url[start..];
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    let password = start + colon + 1..start + at;
    if password.is_empty() {
        return url.to_owned();
    }
    let mut redacted = String::with_capacity(url.len());
    redacted.push_str(&url[..password.start]);
    redacted.push_str(MASK);
    redacted.push_str(&url[password.end..]);
    redacted
}

/// RFC 3986: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme(text: &str) -> bool {
    text.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_masked() {
        for (url, expected) in [
            ("redis://user:s3cret@h:6379/0", "redis://user:***@h:6379/0"),
            ("rediss://user:s3cret@h:6379", "rediss://user:***@h:6379"),
            (
                "etcd://u:p@h1:2379,h2:2379/ns",
                "etcd://u:***@h1:2379,h2:2379/ns",
            ),
            ("redis://:pw@h", "redis://:***@h"),
            ("redis://u:pw@h?namespace=a", "redis://u:***@h?namespace=a"),
            ("redis://u:pw@h#frag", "redis://u:***@h#frag"),
            // The userinfo ends at the last `@`; the password starts after the first `:`.
            ("redis://u:p@ss:w@h:1/0", "redis://u:***@h:1/0"),
            ("etcd://u:a:b@h:2379", "etcd://u:***@h:2379"),
            // Reserved characters left unescaped in a password never end it early.
            ("etcd://root:ab/cd@h:2379", "etcd://root:***@h:2379"),
            ("redis://u:a?b#c@h:1/0", "redis://u:***@h:1/0"),
            // Without a scheme, the authority starts at the beginning.
            ("u:pw@h:2379", "u:***@h:2379"),
            ("u:pw@h://x", "u:***@h://x"),
            ("redis+unix://u:pw@h", "redis+unix://u:***@h"),
            ("redis://u:pw@", "redis://u:***@"),
        ] {
            assert_eq!(redact_url(url), expected, "{url}");
        }
    }

    #[test]
    fn urls_without_a_password_are_unchanged() {
        for url in [
            "",
            "memory://",
            "redis://h:6379/0",
            "redis://user@h:6379/0",
            "redis://user:@h:6379/0",
            "etcd://h1:2379,h2:2379/ns",
            "localhost:2379",
            "://",
            "://u:p",
            "@",
            ":@",
            "a://@",
        ] {
            assert_eq!(redact_url(url), url, "{url:?}");
        }
    }

    #[test]
    fn an_at_sign_after_the_authority_hides_more_never_less() {
        for (url, expected) in [
            ("etcd://h:2379/a@b", "etcd://h:***@b"),
            ("redis://h:6379?x=u:p@q", "redis://h:***@q"),
            ("redis://h#u:p@q", "redis://h#u:***@q"),
        ] {
            assert_eq!(redact_url(url), expected, "{url:?}");
        }
    }

    #[test]
    fn never_panics_and_never_keeps_the_password() {
        // Multi-byte characters around every delimiter, to catch slicing off a char
        // boundary.
        let parts = ["", "é", "://", ":", "@", "/", "?", "#", "ü:", "@ß", "p€"];
        for a in parts {
            for b in parts {
                for c in parts {
                    for d in parts {
                        let url = format!("{a}{b}{c}{d}");
                        let _ = redact_url(&url);
                    }
                }
            }
        }
        let url = "etcd://ädmin:pässwörd€@h1:2379,h2:2379/ns";
        let redacted = redact_url(url);
        assert_eq!(redacted, "etcd://ädmin:***@h1:2379,h2:2379/ns");
        assert!(!redacted.contains("pässwörd"));
    }
}
