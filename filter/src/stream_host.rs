//! The host as one HTTP stream sees it: exactly the calls the request path makes. The stream
//! logic is generic over [`Host`], so unit tests drive it with a fake host, while the filter
//! gets [`Envoy`](crate::host::Envoy), a zero-sized type whose methods are the raw host calls
//! of [`host`](crate::host), monomorphised: no dynamic dispatch on the request path.

/// The host calls of one stream. Like the raw calls behind them, none fails loudly: a read that
/// fails gives an empty or absent value, a refused write is ignored unless its result says
/// otherwise.
pub trait Host {
    /// The request's headers, serialized as the host hands them over; read them with
    /// [`HeaderPairs::parse`](cohort_core::header_pairs::HeaderPairs::parse). Empty on any
    /// failure.
    fn request_headers(&mut self) -> Vec<u8>;

    /// Replaces a request header; `false` when the host refused.
    fn replace_request_header(&mut self, name: &str, value: &[u8]) -> bool;

    /// Removes a request header.
    fn remove_request_header(&mut self, name: &str);

    /// One response header's value; `None` when absent or on any failure.
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>>;

    /// Adds a response header, keeping existing ones of the same name.
    fn add_response_header(&mut self, name: &str, value: &[u8]);

    /// Host time in nanoseconds since the Unix epoch (0 if unavailable): only to seed an
    /// anonymous user's id.
    fn now_nanos(&mut self) -> u64;

    /// Adds `by` to a counter; nothing for a metric the host did not define (`None`).
    fn increment(&mut self, metric: Option<u32>, by: u64);

    /// Sets a request header. Should the host refuse, the header is removed instead: this is
    /// how the routing header is set, and a value the client sent must never stay.
    fn set_request_header(&mut self, name: &str, value: &[u8]) {
        if !self.replace_request_header(name, value) {
            self.remove_request_header(name);
        }
    }
}
