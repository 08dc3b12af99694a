//! The home of `unsafe` and `libc`: io_uring setup, the provided-buffer ring, sockets,
//! resource limits and CPU affinity. Nothing above this module calls `libc` directly.
pub mod alloc;
pub mod bufring;
pub mod perm;
pub mod signal;
pub mod socket;
pub mod uring;
