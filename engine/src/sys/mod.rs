//! The home of `unsafe` and `libc`: io_uring setup, epoll and eventfd syscalls, the provided-buffer ring, sockets,
//! resource limits, CPU affinity, file modes, the allocator's release of freed memory, and
//! the sockets an exited engine leaves listening. Nothing above this module calls `libc`
//! directly.
pub mod alloc;
pub mod bufring;
pub mod epoll;
pub mod eventfd;
pub mod orphan;
pub mod perm;
pub mod signal;
pub mod socket;
pub mod uring;
