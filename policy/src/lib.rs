//! ward's confinement policies and the code that applies them.
//!
//! Policies are data: `seccomp/<arch>/<layer>.json` holds seccompiler rules with a comment each,
//! and `seccomp/filters.json` says which layers make up the filter of each process or thread kind
//! (`base + event_loop + vhost_user + accept + block` for the block worker). `build.rs` compiles every filter to BPF
//! at build time and embeds it, so a process kind without a policy cannot be built, let alone
//! started. See `policy/README.md`.
//!
//! [`vm::VmPolicy`] is the per-VM confinement policy (JSON): which of seccomp, namespaces,
//! Landlock, a uid of the VM's own, rlimits, a cgroup and an SELinux context each process kind
//! gets, and how firmly.

pub mod host;
pub mod sandbox;
pub mod seccomp;
pub mod selinux;
pub mod vm;

pub use seccomp::{Profile, SeccompMode};
