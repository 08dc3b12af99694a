//! Moving events between threads and keeping them for resume: the broadcast ring that
//! links the ingest thread to every loop, and the bounded per-topic replay history.
//! Generic over the event type; uses nothing else of ours.
pub mod broadcast;
pub mod history;
