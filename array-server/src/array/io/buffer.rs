//! Page-aligned I/O buffers for O_DIRECT, pooled per thread, and disjoint views of one
//! buffer so that the disk I/Os of one request can run concurrently.
//!
//! Data always sits at [`DATA_OFFSET`] in a buffer; the bytes before it are room for a
//! read reply's frame head, so header and data leave in one send without a copy.

use std::cell::RefCell;
use std::ptr::NonNull;
use std::rc::Rc;

use tokio_uring::buf::{IoBuf, IoBufMut};

use crate::error::{Error, Result};

/// Alignment of every buffer: one page, enough for any device's O_DIRECT rules.
pub const BUFFER_ALIGN: usize = 4096;
/// Where data starts in a buffer; the room before it holds a reply's frame head.
pub const DATA_OFFSET: usize = BUFFER_ALIGN;
/// Smallest data area handed out (one class per power of two above it).
const MIN_DATA_CLASS: usize = 4096;
/// Bytes of free buffers one thread keeps per size class.
const POOL_BYTES_PER_CLASS: usize = 32 << 20;
/// Number of power-of-two classes tracked (up to 2^40 bytes).
const CLASSES: usize = 41;

/// An owned, page-aligned, always-initialised byte buffer.
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    capacity: usize,
    len: usize,
}

// SAFETY: the buffer exclusively owns its allocation, like a `Vec<u8>`.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// A buffer whose data area ([`DATA_OFFSET`]..) holds at least `data_len` bytes; its
    /// length is set to `DATA_OFFSET + data_len`. Contents are unspecified (reused).
    pub fn for_data(data_len: usize) -> AlignedBuf {
        let class_len = data_len.max(MIN_DATA_CLASS).next_power_of_two();
        let capacity = DATA_OFFSET + class_len;
        let ptr = POOL
            .try_with(|pool| pool.borrow_mut().take(capacity))
            .ok()
            .flatten()
            .unwrap_or_else(|| allocate(capacity));
        AlignedBuf {
            ptr,
            capacity,
            len: DATA_OFFSET + data_len,
        }
    }

    /// Bytes usable.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte is in use.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the bytes in use (every byte is initialised, so any length up to capacity).
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity,
            "length {len} above capacity {}",
            self.capacity
        );
        self.len = len;
    }

    /// The bytes in use.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` owns `capacity >= len` initialised bytes (allocated zeroed).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes in use, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The data area: `DATA_OFFSET..len`.
    pub fn data(&self) -> &[u8] {
        &self.as_slice()[DATA_OFFSET..]
    }

    /// The data area, mutably.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.as_mut_slice()[DATA_OFFSET..]
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let (ptr, capacity) = (self.ptr, self.capacity);
        let kept = POOL
            .try_with(|pool| pool.borrow_mut().give_back(ptr, capacity))
            .unwrap_or(false);
        if !kept {
            // SAFETY: `ptr` was allocated by `allocate(capacity)` and is no longer used.
            unsafe { deallocate(ptr, capacity) };
        }
    }
}

// SAFETY: `ptr` stays valid and fixed while the buffer lives (moving the struct does not
// move the heap allocation); `len` bytes are initialised and `capacity` bytes are usable.
unsafe impl IoBuf for AlignedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len
    }

    fn bytes_total(&self) -> usize {
        self.capacity
    }
}

// SAFETY: the pointer is writable for `capacity` bytes and owned by this buffer alone.
unsafe impl IoBufMut for AlignedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    unsafe fn set_init(&mut self, pos: usize) {
        if pos > self.len {
            self.len = pos.min(self.capacity);
        }
    }
}

fn layout(capacity: usize) -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(capacity, BUFFER_ALIGN).expect("buffer sizes are sane")
}

fn allocate(capacity: usize) -> NonNull<u8> {
    let layout = layout(capacity);
    // SAFETY: `capacity` is at least DATA_OFFSET + MIN_DATA_CLASS, never zero. Zeroed
    // memory makes every byte initialised for the buffer's whole life.
    let raw = unsafe { std::alloc::alloc_zeroed(layout) };
    NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
}

/// # Safety
/// `ptr` must come from `allocate(capacity)` and not be used afterwards.
unsafe fn deallocate(ptr: NonNull<u8>, capacity: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe { std::alloc::dealloc(ptr.as_ptr(), layout(capacity)) }
}

/// Free buffers of one thread, by size class.
struct Pool {
    classes: Vec<Vec<(NonNull<u8>, usize)>>,
}

impl Pool {
    fn class(capacity: usize) -> usize {
        ((capacity - DATA_OFFSET).trailing_zeros() as usize).min(CLASSES - 1)
    }

    fn take(&mut self, capacity: usize) -> Option<NonNull<u8>> {
        let class = &mut self.classes[Pool::class(capacity)];
        let position = class.iter().rposition(|(_, cap)| *cap == capacity)?;
        Some(class.swap_remove(position).0)
    }

    fn give_back(&mut self, ptr: NonNull<u8>, capacity: usize) -> bool {
        let class = &mut self.classes[Pool::class(capacity)];
        if (class.len() + 1) * capacity > POOL_BYTES_PER_CLASS && !class.is_empty() {
            return false;
        }
        class.push((ptr, capacity));
        true
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (ptr, capacity) in self.classes.drain(..).flatten() {
            // SAFETY: pooled pointers come from `allocate(capacity)` and are unused.
            unsafe { deallocate(ptr, capacity) };
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool { classes: (0..CLASSES).map(|_| Vec::new()).collect() });
}

/// A disjoint byte range of a shared [`AlignedBuf`], handed to one disk I/O.
///
/// Views of one buffer never overlap (the stripe map yields disjoint pieces), and the
/// buffer is not otherwise touched until every view is dropped, so concurrent kernel
/// reads and writes through them never alias.
#[derive(Debug)]
pub struct BufPart {
    owner: Rc<AlignedBuf>,
    start: usize,
    len: usize,
}

impl BufPart {
    /// A view of `owner[start..start + len]`.
    ///
    /// # Panics
    /// If the range is outside the buffer's capacity.
    pub fn new(owner: Rc<AlignedBuf>, start: usize, len: usize) -> BufPart {
        assert!(start + len <= owner.capacity, "view outside its buffer");
        BufPart { owner, start, len }
    }

    /// The view's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes from `stable_ptr`, inside the buffer (see `new`).
        unsafe { std::slice::from_raw_parts(IoBuf::stable_ptr(self), self.len) }
    }

    /// The view's bytes, mutably: views of one buffer never overlap and nothing else reads
    /// the buffer while they exist (see the type's documentation).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` and disjoint views make this the only
        // access to these bytes.
        unsafe { std::slice::from_raw_parts_mut(IoBufMut::stable_mut_ptr(self), self.len) }
    }
}

// SAFETY: the pointer stays valid while `owner` (an Rc keeping the allocation alive) lives;
// all `len` bytes are initialised (buffers are allocated zeroed).
unsafe impl IoBuf for BufPart {
    fn stable_ptr(&self) -> *const u8 {
        // SAFETY: `start + len <= capacity`, checked in `new`.
        unsafe { self.owner.ptr.as_ptr().add(self.start) }
    }

    fn bytes_init(&self) -> usize {
        self.len
    }

    fn bytes_total(&self) -> usize {
        self.len
    }
}

// SAFETY: views of one buffer are disjoint and nothing reads the buffer while they exist
// (see the type's documentation), so writing through this pointer aliases nothing.
unsafe impl IoBufMut for BufPart {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: `start + len <= capacity`, checked in `new`.
        unsafe { self.owner.ptr.as_ptr().add(self.start) }
    }

    unsafe fn set_init(&mut self, _pos: usize) {}
}

/// Takes the buffer back once every view of it has been dropped.
pub fn reclaim(owner: Rc<AlignedBuf>) -> Result<AlignedBuf> {
    Rc::try_unwrap(owner).map_err(|_| {
        Error::io(
            "reclaiming an I/O buffer",
            std::io::Error::other("a disk I/O still holds a view of the buffer"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_recycled() {
        let buffer = AlignedBuf::for_data(5000);
        assert_eq!(buffer.stable_ptr() as usize % BUFFER_ALIGN, 0);
        assert_eq!(buffer.len(), DATA_OFFSET + 5000);
        assert_eq!(buffer.capacity(), DATA_OFFSET + 8192);
        let address = buffer.stable_ptr();
        drop(buffer);
        let again = AlignedBuf::for_data(8000);
        assert_eq!(again.stable_ptr(), address);
    }
}
