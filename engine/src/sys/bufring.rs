//! The per-loop provided-buffer ring (`IORING_REGISTER_PBUF_RING`): the kernel picks a
//! buffer for each multishot receive, so an idle connection holds no buffer at all.
//!
//! Owns the mmap'd ring of `io_uring_buf` descriptors and the buffer memory. A buffer
//! handed to user space by a completion belongs to the loop until [`BufRing::recycle`]
//! gives it back; the loop recycles every buffer in the same turn it arrives.
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;

/// One descriptor of the shared ring, laid out as the kernel's `struct io_uring_buf`.
#[repr(C)]
struct BufDesc {
    addr: u64,
    len: u32,
    bid: u16,
    /// In the first descriptor this field is the ring's tail (`struct io_uring_buf_ring`).
    resv: u16,
}

const _: () = assert!(std::mem::size_of::<BufDesc>() == 16);

/// A registered provided-buffer ring of `count` buffers of `size` bytes.
pub struct BufRing {
    descs: NonNull<BufDesc>,
    descs_len: usize,
    bufs: NonNull<u8>,
    bufs_len: usize,
    count: u16,
    size: u32,
    tail: u16,
    group: u16,
}

impl BufRing {
    /// Maps, fills and registers a ring of `count` buffers (a power of two, at most 32,768)
    /// of `size` bytes each under buffer group `group`.
    ///
    /// # Errors
    /// The mmap or registration error.
    ///
    /// # Panics
    /// If `count` is not a power of two in 1..=32,768.
    pub fn new(submitter: &Submitter<'_>, group: u16, count: u16, size: u32) -> io::Result<Self> {
        assert!(
            count.is_power_of_two() && count <= 32_768,
            "buffer count {count} must be a power of two <= 32768"
        );
        let descs_len = usize::from(count) * std::mem::size_of::<BufDesc>();
        let bufs_len = usize::from(count) * size as usize;
        let descs = map_anonymous(descs_len)?.cast::<BufDesc>();
        let bufs = match map_anonymous(bufs_len) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: `descs` was mapped above with exactly `descs_len` bytes.
                unsafe { libc::munmap(descs.as_ptr().cast(), descs_len) };
                return Err(e);
            }
        };
        let mut ring = BufRing {
            descs,
            descs_len,
            bufs,
            bufs_len,
            count,
            size,
            tail: 0,
            group,
        };
        // SAFETY: the descriptor memory is page-aligned, lives until `Drop` unregisters the
        // group, and holds `count` descriptors as the registration states.
        unsafe {
            submitter.register_buf_ring_with_flags(descs.as_ptr() as u64, count, group, 0)?;
        }
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish_tail();
        Ok(ring)
    }

    /// The buffer group id to name in `RecvMulti`.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// The bytes the kernel wrote into buffer `bid`.
    ///
    /// # Panics
    /// If `bid` or `len` is out of range: the kernel never reports such a completion.
    pub fn get(&self, bid: u16, len: usize) -> &[u8] {
        assert!(
            bid < self.count && len <= self.size as usize,
            "buffer {bid} len {len} out of range"
        );
        let offset = usize::from(bid) * self.size as usize;
        // SAFETY: the range lies inside the `bufs` mapping (checked above), and the kernel
        // finished writing it before posting the completion that named `bid`; it will not
        // write there again until `recycle(bid)` returns the buffer.
        unsafe { std::slice::from_raw_parts(self.bufs.as_ptr().add(offset), len) }
    }

    /// The bytes the kernel wrote into buffer `bid`, to change in place (WebSocket
    /// unmasking) before the buffer is recycled.
    ///
    /// # Panics
    /// If `bid` or `len` is out of range.
    pub fn get_mut(&mut self, bid: u16, len: usize) -> &mut [u8] {
        assert!(
            bid < self.count && len <= self.size as usize,
            "buffer {bid} len {len} out of range"
        );
        let offset = usize::from(bid) * self.size as usize;
        // SAFETY: as in `get`; `&mut self` makes this the only view of the buffer, and the
        // kernel does not touch it until `recycle(bid)`.
        unsafe { std::slice::from_raw_parts_mut(self.bufs.as_ptr().add(offset), len) }
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish_tail();
    }

    fn push(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.count - 1));
        let addr = self.bufs.as_ptr() as u64 + u64::from(bid) * u64::from(self.size);
        // SAFETY: `index < count`, inside the descriptor mapping. The kernel reads only
        // descriptors between its head and the published tail, and this one is past the tail.
        // The `resv` field of descriptor 0 doubles as the tail, so it is left untouched.
        unsafe {
            let desc = self.descs.as_ptr().add(index);
            (*desc).addr = addr;
            (*desc).len = self.size;
            (*desc).bid = bid;
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish_tail(&self) {
        // SAFETY: the tail lives at byte offset 14 of the first descriptor (the `resv` field),
        // which is 2-byte aligned; the kernel reads it with acquire semantics, so a release
        // store orders the descriptor writes before it.
        let tail = unsafe { &*(std::ptr::addr_of_mut!((*self.descs.as_ptr()).resv) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both regions were mapped in `new` with these lengths and nothing borrows
        // them past `&self`. The kernel pins the pages of a registered ring, so unmapping
        // them before the io_uring itself is closed leaves the kernel's view intact.
        unsafe {
            libc::munmap(self.descs.as_ptr().cast(), self.descs_len);
            libc::munmap(self.bufs.as_ptr().cast(), self.bufs_len);
        }
    }
}

fn map_anonymous(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}
