//! Block worker.
