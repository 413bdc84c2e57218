//! Outgoing HTTP through the host (for plugins granted `http`, to allow-listed destinations).
//!
//! The pattern: `dispatch` starts the request with [`send`] and returns the pending outcome it
//! gives; the host runs the request (bounded by the deadline) and calls `poll` when the
//! response is complete, where [`receive`] hands it over.
//!
//! ```ignore
//! fn dispatch(call: &Call<Config>, input: &Payload) -> Result<Outcome, Failure> {
//!     let request = http::Request::post(&call.config.url).header("content-type", "application/json");
//!     http::send(&request, input).map_err(|e| Failure::retryable("ENDPOINT_UNAVAILABLE", e.to_string()))
//! }
//!
//! fn poll(_call: &Call<Config>, handle: String) -> Result<Outcome, Failure> {
//!     match http::receive(handle) {
//!         http::Received::InFlight(waiting) => Ok(waiting),
//!         http::Received::Failed(e) => Err(Failure::retryable("ENDPOINT_UNAVAILABLE", e.to_string())),
//!         http::Received::Response(r) => Ok(Outcome::output("application/json", r.body)),
//!     }
//! }
//! ```

pub use crate::bindings::nanofaas::dispatcher::http::{HttpError, Request, Response, check_url};
use crate::bindings::nanofaas::dispatcher::http::{start, take_response};
use crate::{Outcome, Payload};

impl Request {
    /// A request with no headers and no timeout of its own (the deadline still bounds it).
    pub fn new(method: &str, url: impl Into<String>) -> Request {
        Request { method: method.to_string(), url: url.into(), headers: Vec::new(), timeout_ms: None }
    }

    pub fn post(url: impl Into<String>) -> Request {
        Request::new("POST", url)
    }

    pub fn get(url: impl Into<String>) -> Request {
        Request::new("GET", url)
    }

    /// Adds a header (names are case-insensitive; the host sends them as given).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Bounds the whole exchange (within the execution's deadline).
    pub fn timeout_ms(mut self, ms: Option<u32>) -> Request {
        self.timeout_ms = ms;
        self
    }
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Starts `request` with `body`; returns the outcome for `dispatch` to return: pending, woken
/// when the response is complete.
pub fn send(request: &Request, body: &Payload) -> Result<Outcome, HttpError> {
    start(request, body).map(Outcome::wait)
}

/// What [`receive`] found.
pub enum Received {
    /// The whole response.
    Response(Response),
    /// The request failed.
    Failed(HttpError),
    /// Still in flight: return this outcome from `poll` to keep waiting.
    InFlight(Outcome),
}

/// In `poll`: the response of the request `handle` names (handed over once).
pub fn receive(handle: String) -> Received {
    match take_response(&handle) {
        None => Received::InFlight(Outcome::wait(handle)),
        Some(Ok(response)) => Received::Response(response),
        Some(Err(e)) => Received::Failed(e),
    }
}
