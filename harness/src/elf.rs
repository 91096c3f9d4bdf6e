//! The two facts of an ELF file the trainer's sandbox needs: the dynamic loader a program names
//! (`PT_INTERP`, which the kernel opens for execution), and the folders a shared library tells
//! the loader to search (`DT_RUNPATH`, `DT_RPATH`). pip's LibTorch finds its CUDA runtime that
//! way, in `site-packages/nvidia/*/lib` beside `torch/lib`, so those folders must be readable.
//!
//! Only 64-bit little-endian files are read (x86_64, aarch64); anything else yields nothing.
//! Headers are read by offset, so a 1 GB `libtorch_cuda.so` costs a few small reads.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const PT_INTERP: u32 = 3;
const SHT_DYNAMIC: u32 = 6;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
/// More than any real header table; a corrupt header cannot make the harness read gigabytes.
const MAX_TABLE: u64 = 1 << 20;
/// The longest run path read.
const MAX_PATH_STRING: u64 = 1 << 16;

struct Elf {
    file: File,
}

impl Elf {
    fn open(path: &Path) -> Option<Elf> {
        let file = File::open(path).ok()?;
        let mut ident = [0u8; 6];
        file.read_exact_at(&mut ident, 0).ok()?;
        (&ident == b"\x7fELF\x02\x01").then_some(Elf { file })
    }

    fn bytes(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        if len > MAX_TABLE {
            return None;
        }
        offset.checked_add(len)?;
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }

    fn u16_at(&self, offset: u64) -> Option<u16> {
        Some(u16::from_le_bytes(self.bytes(offset, 2)?.try_into().ok()?))
    }

    fn u64_at(&self, offset: u64) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(offset, 8)?.try_into().ok()?))
    }

    /// (type, offset, size, link) of every section header.
    fn sections(&self) -> Option<Vec<(u32, u64, u64, u32)>> {
        let (shoff, shentsize, shnum) = (self.u64_at(0x28)?, self.u16_at(0x3A)? as u64, self.u16_at(0x3C)? as u64);
        let table = self.bytes(shoff, shentsize.checked_mul(shnum)?)?;
        let field = |s: &[u8], o: usize, n: usize| s.get(o..o + n).map(|b| b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64));
        table
            .chunks_exact(shentsize.max(1) as usize)
            .map(|s| Some((field(s, 4, 4)? as u32, field(s, 24, 8)?, field(s, 32, 8)?, field(s, 40, 4)? as u32)))
            .collect()
    }
}

/// The `PT_INTERP` path of the program at `path`.
pub fn interpreter(path: &Path) -> Option<PathBuf> {
    let elf = Elf::open(path)?;
    let (phoff, phentsize, phnum) = (elf.u64_at(0x20)?, elf.u16_at(0x36)? as u64, elf.u16_at(0x38)? as u64);
    for i in 0..phnum {
        // Checked: the trainer binary is the experiment's, and its header may be anything.
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if elf.bytes(ph, 4)? == PT_INTERP.to_le_bytes() {
            let raw = elf.bytes(elf.u64_at(ph.checked_add(8)?)?, elf.u64_at(ph.checked_add(32)?)?)?;
            let raw = raw.strip_suffix(&[0]).unwrap_or(&raw);
            return Some(PathBuf::from(String::from_utf8_lossy(raw).into_owned()));
        }
    }
    None
}

/// The folders that the `DT_RUNPATH` and `DT_RPATH` entries of the ELF file at `path` name,
/// with `$ORIGIN` resolved to the file's own folder, as written (not yet canonical). Entries
/// with other loader variables (`$LIB`, `$PLATFORM`) are skipped.
pub fn search_path(path: &Path) -> Vec<PathBuf> {
    let origin = path.parent().unwrap_or(Path::new("/"));
    raw_search_path(path)
        .unwrap_or_default()
        .iter()
        .flat_map(|entry| entry.split(':'))
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            let e = e.replace("${ORIGIN}", "$ORIGIN");
            let e = match e.strip_prefix("$ORIGIN") {
                Some(rest) => format!("{}{rest}", origin.display()),
                None => e,
            };
            (!e.contains('$') && e.starts_with('/')).then(|| PathBuf::from(e))
        })
        .collect()
}

fn raw_search_path(path: &Path) -> Option<Vec<String>> {
    let elf = Elf::open(path)?;
    let sections = elf.sections()?;
    let &(_, dyn_offset, dyn_size, link) = sections.iter().find(|s| s.0 == SHT_DYNAMIC)?;
    let &(_, str_offset, str_size, _) = sections.get(link as usize)?;
    let dynamic = elf.bytes(dyn_offset, dyn_size)?;
    let mut found = Vec::new();
    for entry in dynamic.chunks_exact(16) {
        let tag = u64::from_le_bytes(entry[..8].try_into().ok()?);
        let value = u64::from_le_bytes(entry[8..].try_into().ok()?);
        if tag == 0 {
            break;
        }
        if tag == DT_RPATH || tag == DT_RUNPATH {
            // The string table of a big library holds megabytes of symbol names: read only this.
            let len = str_size.checked_sub(value)?.min(MAX_PATH_STRING);
            let s = elf.bytes(str_offset.checked_add(value)?, len)?;
            let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
            found.push(String::from_utf8_lossy(&s[..end]).into_owned());
        }
    }
    Some(found)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    /// `cc` a shared library (`shared`) or a program at `dir/name` whose run path is
    /// `run_path`, the way pip's `libtorch_cuda.so` is linked. The C compiler is
    /// build-essential's, which the build needs anyway.
    pub(crate) fn cc(dir: &Path, name: &str, shared: bool, run_path: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let c = dir.join(format!("{name}.c"));
        std::fs::write(&c, "int f(void) { return 1; }\nint main(void) { return f() - 1; }\n").unwrap();
        let mut cmd = Command::new("cc");
        if shared {
            cmd.args(["-shared", "-fPIC"]);
        }
        let out = cmd.arg("-o").arg(dir.join(name)).arg(&c).arg(format!("-Wl,-rpath,{run_path}")).output().expect("cc (build-essential) builds the test library");
        assert!(out.status.success(), "cc: {}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn the_interpreter_of_this_test_binary_is_found() {
        let me = std::env::current_exe().unwrap();
        let interp = interpreter(&me).expect("a dynamically linked test binary");
        assert!(interp.to_string_lossy().contains("ld-linux"), "{}", interp.display());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("text"), "not an elf").unwrap();
        assert!(interpreter(&dir.path().join("text")).is_none());
        assert!(search_path(&dir.path().join("text")).is_empty());
    }

    /// The experiment builds the trainer binary; a header of all-ones offsets must not panic.
    #[test]
    fn a_hostile_header_yields_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = b"\x7fELF\x02\x01".to_vec();
        bytes.resize(4096, 0xff);
        std::fs::write(dir.path().join("trainer"), &bytes).unwrap();
        assert!(interpreter(&dir.path().join("trainer")).is_none());
        assert!(search_path(&dir.path().join("trainer")).is_empty());
    }

    #[test]
    fn a_libraries_origin_relative_run_path_is_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("torch/lib");
        cc(&lib, "liba.so", true, "$ORIGIN/../../nvidia/cuda_runtime/lib:/opt/cuda/lib64:$LIB/x");
        let found = search_path(&lib.join("liba.so"));
        assert_eq!(found, vec![lib.join("../../nvidia/cuda_runtime/lib"), PathBuf::from("/opt/cuda/lib64")]);
    }
}
