//! Logging, the same in every ward process: `tracing` to stderr, filtered by the `WARD_LOG`
//! environment variable (`RUST_LOG` syntax), which the launcher passes on to the processes it
//! spawns (and nothing else of its environment).

/// The variable every ward process reads its log filter from.
pub const ENV: &str = "WARD_LOG";

/// Installs the process's subscriber; `default` applies when `WARD_LOG` is unset or invalid.
pub fn init(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env(ENV)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
