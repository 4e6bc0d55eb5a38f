//! The part of every worker's `main` after the command line became a `Config` (or failed to):
//! log the error with its causes, and turn the outcome into the process's exit code.

use std::error::Error;

use tracing::{error, info};
use ward_policy::sandbox::{self, Confinement};

/// Default log filter. virtio-queue logs some guest-caused ring errors itself, without a rate
/// limit; the workers count those themselves (and log them rate-limited), so its own lines
/// stay off.
pub const DEFAULT_LOG: &str = "warn,virtio_queue=off";

/// The exit code of a worker whose frontend disconnected (the VM is gone).
pub const OK: i32 = 0;

/// The exit code of a worker that could not enter the confinement the launcher asked for.
pub const CONFINE: i32 = 7;

/// Enters the confinement handed over with `--confine` (see `ward_policy::sandbox`), first
/// thing in `main`, while the process is single-threaded and has read nothing it does not
/// control. Without one (a worker run by hand or by a test), nothing happens. On failure the
/// error is logged and [`CONFINE`] returned, to exit with.
pub fn confine(json: Option<&str>) -> Result<(), i32> {
    let Some(json) = json else {
        return Ok(());
    };
    match Confinement::parse(json).and_then(|c| sandbox::enter(&c)) {
        Ok(report) => {
            info!(%report, "confined");
            Ok(())
        }
        Err(e) => {
            error!("cannot enter the confinement: {}", chain(&e));
            Err(CONFINE)
        }
    }
}

/// What every worker's `main` does once its arguments are parsed, and exits with the code:
/// enter the confinement handed over (`--confine`, see [`confine`]) before anything else, then
/// make its `Config` and run it (see [`code`]).
pub fn main<C, CE, E>(
    confine_json: Option<&str>,
    config: impl FnOnce() -> Result<C, CE>,
    usage: i32,
    run: impl FnOnce(C) -> Result<(), E>,
    exit_code: impl FnOnce(&E) -> i32,
) -> !
where
    CE: Error,
    E: Error,
{
    if let Err(c) = confine(confine_json) {
        std::process::exit(c);
    }
    std::process::exit(code(config(), usage, run, exit_code))
}

/// The error and its causes, outermost first, separated by `": "`.
pub fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Runs a worker and returns its exit code: `usage` for an invalid configuration, [`OK`] when
/// `run` returns `Ok`, and `exit_code` of the error otherwise. Either error is logged first
/// (at error level, with its causes).
pub fn code<C, CE, E>(
    config: Result<C, CE>,
    usage: i32,
    run: impl FnOnce(C) -> Result<(), E>,
    exit_code: impl FnOnce(&E) -> i32,
) -> i32
where
    CE: Error,
    E: Error,
{
    match config {
        Err(e) => {
            error!("{}", chain(&e));
            usage
        }
        Ok(cfg) => match run(cfg) {
            Ok(()) => OK,
            Err(e) => {
                error!("{}", chain(&e));
                exit_code(&e)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("Cannot start")]
        Start(#[source] std::io::Error),
        #[error("Bad config")]
        Config,
    }

    #[test]
    fn chain_lists_causes_outermost_first() {
        let e = Outer::Start(std::io::Error::other("no luck"));
        assert_eq!(chain(&e), "Cannot start: no luck");
        assert_eq!(chain(&Outer::Config), "Bad config");
    }

    #[test]
    fn codes() {
        let ok: Result<u8, Outer> = Ok(1);
        assert_eq!(code(ok, 2, |_| Ok::<(), Outer>(()), |_| 9), OK);
        let bad: Result<u8, Outer> = Err(Outer::Config);
        assert_eq!(code(bad, 2, |_| Ok::<(), Outer>(()), |_| 9), 2);
        let failing: Result<u8, Outer> = Ok(1);
        assert_eq!(code(failing, 2, |_| Err(Outer::Config), |_| 9), 9);
    }
}
