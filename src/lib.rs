//! Examples and end-to-end tests of kvstore live in `examples/` and `tests/`; this
//! library is empty.
