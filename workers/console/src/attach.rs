//! The attach protocol: what a console client sends first, and what it gets back.
//!
//! A client connects to the attach socket and sends one line:
//!
//! | line             | meaning                                                          |
//! |------------------|------------------------------------------------------------------|
//! | `attach\n`       | interactive: sees the output, its input goes to the guest        |
//! | `attach force\n` | interactive, taking over from the interactive client there now   |
//! | `watch\n`        | output only; whatever it sends is read and discarded             |
//!
//! (A `\r` before the `\n` is accepted.) The worker answers one line:
//!
//! - `ok\n`: attached; from here on the stream is raw bytes both ways.
//! - `busy\n`, then close: `attach` while an interactive client is attached, `watch` while
//!   [`MAX_WATCHERS`] watch, or more than [`MAX_HANDSHAKES`] connections still in their
//!   handshake.
//! - `error\n`, then close: a malformed first line, one longer than [`MAX_LINE`] bytes, or
//!   none within [`HANDSHAKE_TIMEOUT`].
//!
//! Bytes after the first line in the same write are the first input (interactive) or are
//! discarded (watcher). A client replaced by `attach force` receives [`TAKEN_OVER`] and is
//! closed. A client that disconnects frees its place; one that only shuts its sending side
//! keeps it and goes on receiving output.
//!
//! Output a client does not read in time is dropped for that client, and input is taken only
//! as fast as the guest posts receive buffers: [`crate::clients`] serves the protocol without
//! ever blocking on a client.

use std::time::Duration;

/// Longest first line, without its `\n`.
pub const MAX_LINE: usize = 64;
/// Most clients watching at once.
pub const MAX_WATCHERS: usize = 8;
/// Most connections in their handshake at once.
pub const MAX_HANDSHAKES: usize = 16;
/// How long a client has to send its first line.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Output buffered per client, at most.
pub const OUTPUT_MAX: usize = 256 * 1024;

pub const OK: &[u8] = b"ok\n";
pub const BUSY: &[u8] = b"busy\n";
pub const ERROR: &[u8] = b"error\n";
/// What a client replaced by `attach force` receives before it is closed.
pub const TAKEN_OVER: &[u8] = b"\r\n[ward: console taken over by another client]\r\n";

/// What a client asks for in its first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Attach,
    Force,
    Watch,
}

/// The request a first line (without its `\n`) makes, if it is one.
pub fn parse_request(line: &[u8]) -> Option<Request> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line {
        b"attach" => Some(Request::Attach),
        b"attach force" => Some(Request::Force),
        b"watch" => Some(Request::Watch),
        _ => None,
    }
}

/// Tunables; the defaults are the constants above (tests shorten the timeout).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub output_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            output_max: OUTPUT_MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(parse_request(b"attach"), Some(Request::Attach));
        assert_eq!(parse_request(b"attach\r"), Some(Request::Attach));
        assert_eq!(parse_request(b"attach force"), Some(Request::Force));
        assert_eq!(parse_request(b"watch"), Some(Request::Watch));
        for bad in [
            &b""[..],
            b"Attach",
            b"attach  force",
            b" watch",
            b"watch\0",
            b"attach\r\r",
        ] {
            assert_eq!(parse_request(bad), None, "{bad:?}");
        }
    }
}
