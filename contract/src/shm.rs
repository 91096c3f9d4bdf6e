//! The shared logits region: an anonymous memory file (`memfd`) the harness creates and an
//! evaluating trainer process inherits, so each position's logits (`rows x vocab` f32, 8 MiB at
//! the cpu profile) cross the process boundary without a socket copy.
//!
//! The harness maps it read-only and copies each row out before it reads it, and before it sends
//! the next position: the trainer keeps a writable mapping and could change a value at any time,
//! but what counts is the copy, made before the targets exist on its side.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A mapped shared region.
pub struct Shm {
    fd: OwnedFd,
    ptr: *mut u8,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain memory owned by this value; access goes through &self/&mut self.
unsafe impl Send for Shm {}
unsafe impl Sync for Shm {}

impl Shm {
    /// A new region of `len` bytes (the harness side), mapped read-only here.
    #[cfg(target_os = "linux")]
    pub fn create(len: usize) -> io::Result<Shm> {
        let name = c"autoresearch-logits";
        // SAFETY: plain syscalls on a fresh descriptor.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Self::map(fd, len, false)
    }

    /// Not available off Linux: evaluation then uses the summary mode.
    #[cfg(not(target_os = "linux"))]
    pub fn create(_len: usize) -> io::Result<Shm> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "shared logits regions need Linux (memfd)"))
    }

    /// Maps an inherited region (the trainer side), writable.
    ///
    /// # Safety
    /// `fd` must be a descriptor of a region of at least `len` bytes that nothing else owns.
    pub unsafe fn from_inherited(fd: RawFd, len: usize) -> io::Result<Shm> {
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if (st.st_size as u64) < len as u64 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("the shared region holds {} bytes, {len} expected", st.st_size)));
        }
        Self::map(fd, len, true)
    }

    fn map(fd: OwnedFd, len: usize, writable: bool) -> io::Result<Shm> {
        if len == 0 {
            return Ok(Shm { fd, ptr: std::ptr::NonNull::dangling().as_ptr(), len, writable });
        }
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh shared mapping of a descriptor we own; unmapped in Drop.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Shm { fd, ptr: ptr.cast(), len, writable })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The descriptor, to hand to the trainer.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Copies `out.len()` f32 values starting at value `index` out of the region.
    pub fn read_f32s(&self, index: usize, out: &mut [f32]) -> io::Result<()> {
        let start = index.checked_mul(4).filter(|&s| s.checked_add(out.len() * 4).is_some_and(|e| e <= self.len));
        let Some(start) = start else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "read past the end of the shared region"));
        };
        // SAFETY: in bounds (checked); the trainer may write concurrently, which can only change
        // the values read, never their validity as f32 bit patterns.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(start), out.as_mut_ptr().cast::<u8>(), out.len() * 4) };
        Ok(())
    }

    /// Writes `values` at the start of the region (the trainer's answer).
    pub fn write_f32s(&mut self, values: &[f32]) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the region is mapped read-only here"));
        }
        let bytes = std::mem::size_of_val(values);
        if bytes > self.len {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{bytes} bytes of logits do not fit the shared region of {}", self.len)));
        }
        // SAFETY: in bounds (checked), writable mapping.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr().cast::<u8>(), self.ptr, bytes) };
        Ok(())
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: our own mapping.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_region_written_through_one_mapping_is_read_through_the_other() {
        let parent = Shm::create(64).unwrap();
        let dup = unsafe { libc::dup(parent.raw_fd()) };
        let mut child = unsafe { Shm::from_inherited(dup, 64) }.unwrap();
        child.write_f32s(&[1.5, -2.0, 3.25]).unwrap();
        let mut out = [0f32; 2];
        parent.read_f32s(1, &mut out).unwrap();
        assert_eq!(out, [-2.0, 3.25]);
        assert!(parent.read_f32s(15, &mut out).is_err(), "past the end");
        assert!(child.write_f32s(&[0.0; 17]).is_err(), "larger than the region");
        let mut ro = Shm::create(8).unwrap();
        assert!(ro.write_f32s(&[1.0]).is_err(), "the harness's mapping is read-only");
        let dup = unsafe { libc::dup(parent.raw_fd()) };
        assert!(unsafe { Shm::from_inherited(dup, 128) }.is_err(), "smaller than announced");
    }
}
