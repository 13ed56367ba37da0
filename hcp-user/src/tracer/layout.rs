//! The kernel layouts hcp's programs read, found for the running kernel and
//! filled into their read-only globals at load ([`super::object::load`]):
//! struct member offsets from BTF, and tracepoint record offsets from
//! tracefs formats. A layout the running kernel does not match fails the
//! load with the field named, never a program reading the wrong bytes.
//!
//! Finding them means reading the kernel's 5 MB of BTF, which takes most
//! of a second under emulation; [`KernelLayout::find`] keeps what it found
//! in a small file, keyed by the running kernel's build id and BTF size, so
//! that it is read once per kernel.

use std::path::Path;

use anyhow::{Context, Result};
use hcp_common::bio::{BioLayout, BIO_BDEV, BIO_DISK};
use hcp_common::freeze::IoctlTpLayout;
use hcp_common::stall::StallLayout;

use super::btf::KernelBtf;
use super::probe::InFlightMode;
use super::tracefs;

/// Everything the programs need to know about the running kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    pub bio: BioLayout,
    /// The BTF type id of each raw tracepoint asked for (`block_bio_queue`:
    /// the id of `btf_trace_block_bio_queue`), which a `tp_btf` program is
    /// loaded against.
    pub tp_btf: Vec<(String, u32)>,
    /// The ioctl syscall tracepoints' layout, or why there is none (a kernel
    /// without syscall tracepoints still traces block I/O).
    pub ioctl: std::result::Result<IoctlTpLayout, String>,
    /// The write-stall programs' layout, or why there is none.
    pub stall: std::result::Result<StallLayout, String>,
    /// How the block programs can keep the starts of I/O in flight here
    /// (what the kernel's verifier accepts, probed).
    pub in_flight: InFlightMode,
}

/// What the cache file starts with; a file of another format is ignored.
const CACHE_FORMAT: &str = "hcp kernel layout 2";

impl KernelLayout {
    /// The layout of the running kernel, with the type ids of the raw
    /// tracepoints `events`: read from `cache` when it was written for this
    /// kernel, else found (and written there when complete).
    pub fn find(events: &[&str], cache: Option<&Path>) -> Result<KernelLayout> {
        let kernel = kernel_identity();
        if let (Some(cache), Some(kernel)) = (cache, &kernel) {
            if let Some(found) = std::fs::read_to_string(cache).ok().and_then(|t| Self::parse(&t, kernel, events)) {
                return Ok(found);
            }
        }
        let found = Self::compute(events)?;
        if let (Some(cache), Some(kernel), true) = (cache, &kernel, found.ioctl.is_ok() && found.stall.is_ok()) {
            // Best effort: without the file the next command finds it again.
            let _ = write_private(cache, &found.to_text(kernel));
        }
        Ok(found)
    }

    /// Reads the BTF (once) and the tracepoint formats.
    pub fn compute(events: &[&str]) -> Result<KernelLayout> {
        let btf = KernelBtf::load()?;
        let tp_btf = events
            .iter()
            .map(|e| Ok((e.to_string(), btf.typedef_id(&format!("btf_trace_{e}"))?)))
            .collect::<Result<Vec<_>>>()?;
        let tracefs = tracefs::root();
        let ioctl = tracefs.as_ref().map_err(|e| format!("{e:#}")).and_then(|t| ioctl(t).map_err(|e| format!("{e:#}")));
        let stall =
            tracefs.as_ref().map_err(|e| format!("{e:#}")).and_then(|t| stall(t, &btf).map_err(|e| format!("{e:#}")));
        Ok(KernelLayout { bio: bio(&btf)?, tp_btf, ioctl, stall, in_flight: InFlightMode::for_running_kernel() })
    }

    /// The type id of raw tracepoint `event`'s `btf_trace_` typedef.
    pub fn tp_btf_id(&self, event: &str) -> Option<u32> {
        self.tp_btf.iter().find(|(e, _)| e == event).map(|(_, id)| *id)
    }

    /// The cache file's text: a field a line, by name, so that a file
    /// written by another version of hcp never fills a field it did not mean.
    fn to_text(&self, kernel: &str) -> String {
        let mut out = format!("{CACHE_FORMAT}\nkernel {kernel}\nin_flight {}\n", self.in_flight);
        let (mut bio, mut ioctl, mut stall) =
            (self.bio, self.ioctl.clone().unwrap_or_default(), self.stall.clone().unwrap_or_default());
        for (name, value) in fields(&mut bio, &mut ioctl, &mut stall) {
            out += &format!("{name} {value}\n");
        }
        for (event, id) in &self.tp_btf {
            out += &format!("tp_btf.{event} {id}\n");
        }
        out
    }

    /// The layout in a cache file's `text`, if it was written for `kernel`
    /// and holds every field and every event.
    fn parse(text: &str, kernel: &str, events: &[&str]) -> Option<KernelLayout> {
        let mut lines = text.lines();
        if lines.next()? != CACHE_FORMAT || lines.next()?.strip_prefix("kernel ")? != kernel {
            return None;
        }
        let in_flight = InFlightMode::from_name(lines.next()?.strip_prefix("in_flight ")?)?;
        let mut values = std::collections::BTreeMap::new();
        for line in lines {
            let (name, value) = line.split_once(' ')?;
            values.insert(name, value.parse::<u32>().ok()?);
        }
        let (mut bio, mut ioctl, mut stall) = Default::default();
        let mut expected = 0;
        for (name, field) in fields(&mut bio, &mut ioctl, &mut stall) {
            *field = *values.get(name)?;
            expected += 1;
        }
        let mut tp_btf = Vec::new();
        for event in events {
            tp_btf.push((event.to_string(), *values.get(format!("tp_btf.{event}").as_str())?));
        }
        let tp_btf_lines = values.keys().filter(|k| k.starts_with("tp_btf.")).count();
        (values.len() == expected + tp_btf_lines).then_some(KernelLayout {
            bio,
            tp_btf,
            ioctl: Ok(ioctl),
            stall: Ok(stall),
            in_flight,
        })
    }
}

/// Every field of the cached layouts, by name.
fn fields<'a>(
    bio: &'a mut BioLayout,
    ioctl: &'a mut IoctlTpLayout,
    stall: &'a mut StallLayout,
) -> [(&'static str, &'a mut u32); 36] {
    [
        ("bio.bio_device", &mut bio.bio_device),
        ("bio.bio_bdev", &mut bio.bio_bdev),
        ("bio.bio_disk", &mut bio.bio_disk),
        ("bio.bio_partno", &mut bio.bio_partno),
        ("bio.disk_part_tbl", &mut bio.disk_part_tbl),
        ("bio.part_tbl_part", &mut bio.part_tbl_part),
        ("bio.part_dev", &mut bio.part_dev),
        ("bio.bio_opf", &mut bio.bio_opf),
        ("bio.bio_size", &mut bio.bio_size),
        ("bio.disk_major", &mut bio.disk_major),
        ("bio.disk_first_minor", &mut bio.disk_first_minor),
        ("bio.rq_part", &mut bio.rq_part),
        ("bio.rq_cmd_flags", &mut bio.rq_cmd_flags),
        ("bio.rq_data_len", &mut bio.rq_data_len),
        ("bio.rq_disk_via_queue", &mut bio.rq_disk_via_queue),
        ("bio.rq_q", &mut bio.rq_q),
        ("bio.queue_disk", &mut bio.queue_disk),
        ("bio.rq_disk", &mut bio.rq_disk),
        ("bio.req_fua", &mut bio.req_fua),
        ("bio.bio_queue_arg", &mut bio.bio_queue_arg),
        ("bio.bio_remap_arg", &mut bio.bio_remap_arg),
        ("bio.bio_remap_dev_arg", &mut bio.bio_remap_dev_arg),
        ("ioctl.enter_fd", &mut ioctl.enter_fd),
        ("ioctl.enter_cmd", &mut ioctl.enter_cmd),
        ("ioctl.enter_arg", &mut ioctl.enter_arg),
        ("ioctl.exit_ret", &mut ioctl.exit_ret),
        ("stall.enter_id", &mut stall.enter_id),
        ("stall.enter_args", &mut stall.enter_args),
        ("stall.exit_ret", &mut stall.exit_ret),
        ("stall.task_files", &mut stall.task_files),
        ("stall.files_fdt", &mut stall.files_fdt),
        ("stall.fdt_max_fds", &mut stall.fdt_max_fds),
        ("stall.fdt_fd", &mut stall.fdt_fd),
        ("stall.file_inode", &mut stall.file_inode),
        ("stall.inode_sb", &mut stall.inode_sb),
        ("stall.sb_dev", &mut stall.sb_dev),
    ]
}

/// The running kernel's build, as precisely as it can be named: its GNU
/// build id (`/sys/kernel/notes`), else its release and version strings,
/// with the size of its BTF either way. None if nothing names it.
fn kernel_identity() -> Option<String> {
    let btf_size = std::fs::metadata("/sys/kernel/btf/vmlinux").ok()?.len();
    let build = match std::fs::read("/sys/kernel/notes").ok().and_then(|n| gnu_build_id(&n)) {
        Some(id) => format!("build-id {id}"),
        None => {
            let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
            format!("release {} version {}", read("/proc/sys/kernel/osrelease")?, read("/proc/sys/kernel/version")?)
        }
    };
    Some(format!("{build} btf {btf_size}"))
}

/// The GNU build id (hex) among ELF notes.
fn gnu_build_id(notes: &[u8]) -> Option<String> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |at: usize| notes.get(at..at + 4).map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")));
    let pad = |n: usize| n.div_ceil(4) * 4;
    let mut at = 0;
    while at + 12 <= notes.len() {
        let (namesz, descsz, kind) = (word(at)? as usize, word(at + 4)? as usize, word(at + 8)?);
        let name = notes.get(at + 12..at + 12 + namesz)?;
        let desc_at = at + 12 + pad(namesz);
        let desc = notes.get(desc_at..desc_at + descsz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" && !desc.is_empty() {
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        at = desc_at + pad(descsz);
    }
    None
}

/// Writes `text` to `path` (0600, replacing it whole).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut staging = path.as_os_str().to_owned();
    staging.push(format!(".{}", std::process::id()));
    let staging = std::path::PathBuf::from(staging);
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&staging)?;
    f.write_all(text.as_bytes())?;
    drop(f);
    std::fs::rename(&staging, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&staging);
    })
}

/// The offsets of the kernel struct fields the block programs read, the
/// request flag they test, and where the tracepoints hand over the bio:
/// for Linux 5.11 and later, or for the members 5.10 had instead (see
/// `hcp_common::bio::BIO_DISK`), chosen by which the kernel's BTF has.
pub fn bio(btf: &KernelBtf) -> Result<BioLayout> {
    let fua_bit = btf.enum_value("__REQ_FUA")?;
    anyhow::ensure!((0..32).contains(&fua_bit), "__REQ_FUA is bit {fua_bit}, outside a 32-bit blk_opf_t");
    let mut layout = BioLayout {
        bio_opf: sized_offset(btf, "bio.bi_opf", 4)?,
        bio_size: sized_offset(btf, "bio.bi_iter.bi_size", 4)?,
        disk_major: sized_offset(btf, "gendisk.major", 4)?,
        disk_first_minor: sized_offset(btf, "gendisk.first_minor", 4)?,
        rq_part: sized_offset(btf, "request.part", 8)?,
        rq_cmd_flags: sized_offset(btf, "request.cmd_flags", 4)?,
        rq_data_len: sized_offset(btf, "request.__data_len", 4)?,
        req_fua: 1 << fua_bit,
        bio_queue_arg: btf.tracepoint_arg("block_bio_queue", "struct bio *")?,
        bio_remap_arg: btf.tracepoint_arg("block_bio_remap", "struct bio *")?,
        bio_remap_dev_arg: btf.tracepoint_arg("block_bio_remap", "dev_t")?,
        ..BioLayout::default()
    };
    if btf.member("bio.bi_bdev").is_ok() {
        layout.bio_device = BIO_BDEV;
        layout.bio_bdev = sized_offset(btf, "bio.bi_bdev", 8)?;
        layout.part_dev = sized_offset(btf, "block_device.bd_dev", 4)?;
    } else {
        layout.bio_device = BIO_DISK;
        layout.bio_disk = sized_offset(btf, "bio.bi_disk", 8)?;
        layout.bio_partno = sized_offset(btf, "bio.bi_partno", 1)?;
        layout.disk_part_tbl = sized_offset(btf, "gendisk.part_tbl", 8)?;
        // A flexible array of pointers: no size to check.
        layout.part_tbl_part = btf.member_offset("disk_part_tbl.part")?;
        layout.part_dev = sized_offset(btf, "hd_struct.__dev.devt", 4)?;
    }
    if btf.member("request_queue.disk").is_ok() {
        layout.rq_disk_via_queue = 1;
        layout.rq_q = sized_offset(btf, "request.q", 8)?;
        layout.queue_disk = sized_offset(btf, "request_queue.disk", 8)?;
    } else {
        layout.rq_disk = sized_offset(btf, "request.rq_disk", 8)?;
    }
    // The arguments the programs take at fixed places, checked: a kernel
    // that moved one fails the load here, naming it.
    for (event, arg, at) in [
        ("block_bio_complete", "struct bio *", 1),
        ("block_rq_issue", "struct request *", 0),
        ("block_rq_requeue", "struct request *", 0),
        ("block_rq_complete", "struct request *", 0),
    ] {
        let found = btf.tracepoint_arg(event, arg)?;
        anyhow::ensure!(found == at, "{event}'s {arg} is its argument {found}; hcp reads argument {at}");
    }
    Ok(layout)
}

/// The offset of the kernel struct member `path`, checked to be `size`
/// bytes, the width the program reads.
fn sized_offset(btf: &KernelBtf, path: &str, size: u32) -> Result<u32> {
    let (offset, found) = btf.member(path)?;
    anyhow::ensure!(found == size, "kernel field {path} is {found} bytes, hcp reads {size}");
    Ok(offset)
}

/// The ioctl syscall tracepoints' record offsets the freeze programs read.
pub fn ioctl(tracefs: &Path) -> Result<IoctlTpLayout> {
    let enter = tracefs::Format::read(tracefs, "syscalls", "sys_enter_ioctl")
        .context("the ioctl syscall tracepoints are missing (the kernel needs CONFIG_FTRACE_SYSCALLS)")?;
    let exit = tracefs::Format::read(tracefs, "syscalls", "sys_exit_ioctl")?;
    ioctl_of(&enter, &exit)
}

fn ioctl_of(enter: &tracefs::Format, exit: &tracefs::Format) -> Result<IoctlTpLayout> {
    Ok(IoctlTpLayout {
        enter_fd: enter.offset_of("fd", 4)?,
        enter_cmd: enter.offset_of("cmd", 4)?,
        enter_arg: enter.offset_of("arg", 8)?,
        exit_ret: exit.offset_of("ret", 8)?,
    })
}

/// The offsets the write-stall programs read: raw syscall records and the
/// path from a task to the device of a file it writes.
pub fn stall(tracefs: &Path, btf: &KernelBtf) -> Result<StallLayout> {
    anyhow::ensure!(cfg!(target_arch = "x86_64"), "write stalls are traced by x86_64 system call numbers only");
    let enter = tracefs::Format::read(tracefs, "raw_syscalls", "sys_enter")
        .context("the raw_syscalls tracepoints are missing (the kernel needs CONFIG_FTRACE_SYSCALLS)")?;
    let exit = tracefs::Format::read(tracefs, "raw_syscalls", "sys_exit")?;
    Ok(StallLayout {
        enter_id: enter.offset_of("id", 8)?,
        enter_args: enter.offset_of("args", 48)?,
        exit_ret: exit.offset_of("ret", 8)?,
        task_files: sized_offset(btf, "task_struct.files", 8)?,
        files_fdt: sized_offset(btf, "files_struct.fdt", 8)?,
        fdt_max_fds: sized_offset(btf, "fdtable.max_fds", 4)?,
        fdt_fd: sized_offset(btf, "fdtable.fd", 8)?,
        file_inode: sized_offset(btf, "file.f_inode", 8)?,
        inode_sb: sized_offset(btf, "inode.i_sb", 8)?,
        sb_dev: sized_offset(btf, "super_block.s_dev", 4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ioctl_record_offsets() {
        // Linux 6.18 (the same on 6.1): every syscall argument is 8 bytes.
        let enter = tracefs::Format::parse(
            "name: sys_enter_ioctl
ID: 898
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned int cmd;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long arg;\toffset:32;\tsize:8;\tsigned:0;
",
        )
        .unwrap();
        let exit = tracefs::Format::parse(
            "name: sys_exit_ioctl
format:
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;
",
        )
        .unwrap();
        let layout = ioctl_of(&enter, &exit).unwrap();
        assert_eq!(layout, IoctlTpLayout { enter_fd: 16, enter_cmd: 24, enter_arg: 32, exit_ret: 16 });
        let err = ioctl_of(&exit, &exit).unwrap_err().to_string();
        assert!(err.contains("no field `fd`"), "{err}");
    }

    fn sample() -> KernelLayout {
        let mut layout = KernelLayout {
            bio: BioLayout::default(),
            tp_btf: vec![("block_bio_queue".into(), 7), ("block_rq_issue".into(), 70_000)],
            ioctl: Ok(IoctlTpLayout { enter_fd: 16, enter_cmd: 24, enter_arg: 32, exit_ret: 16 }),
            stall: Ok(StallLayout::default()),
            in_flight: InFlightMode::HashMap,
        };
        let (mut ioctl, mut stall) = (layout.ioctl.clone().unwrap(), layout.stall.clone().unwrap());
        // Every field a value of its own, so that a swap would show.
        for (i, (_, field)) in fields(&mut layout.bio, &mut ioctl, &mut stall).into_iter().enumerate() {
            *field = 100 + i as u32;
        }
        KernelLayout { ioctl: Ok(ioctl), stall: Ok(stall), ..layout }
    }

    #[test]
    fn the_cache_gives_back_what_was_written_for_the_same_kernel_only() {
        let layout = sample();
        let events = ["block_bio_queue", "block_rq_issue"];
        let text = layout.to_text("build-id ab12 btf 5000");
        assert_eq!(KernelLayout::parse(&text, "build-id ab12 btf 5000", &events), Some(layout.clone()));
        assert_eq!(KernelLayout::parse(&text, "build-id ab13 btf 5000", &events), None, "another kernel");
        assert_eq!(KernelLayout::parse(&text, "build-id ab12 btf 5000", &["block_rq_complete"]), None);
        // A field missing, unknown, or not a number: found anew.
        let missing: String = text.lines().filter(|l| !l.starts_with("bio.rq_q ")).map(|l| format!("{l}\n")).collect();
        assert_eq!(KernelLayout::parse(&missing, "build-id ab12 btf 5000", &events), None);
        let extra = format!("{text}bio.new_field 3\n");
        assert_eq!(KernelLayout::parse(&extra, "build-id ab12 btf 5000", &events), None);
        let bad: String = text
            .lines()
            .map(|l| if l.starts_with("bio.rq_q ") { "bio.rq_q x\n".to_string() } else { format!("{l}\n") })
            .collect();
        assert_ne!(bad, text);
        assert_eq!(KernelLayout::parse(&bad, "build-id ab12 btf 5000", &events), None);
        let table = text.replace("in_flight hash_map", "in_flight table");
        assert_ne!(table, text);
        let parsed = KernelLayout::parse(&table, "build-id ab12 btf 5000", &events).unwrap();
        assert_eq!(parsed.in_flight, InFlightMode::Table);
        let unknown = text.replace("in_flight hash_map", "in_flight ring");
        assert_eq!(KernelLayout::parse(&unknown, "build-id ab12 btf 5000", &events), None);
        let old = text.replace(CACHE_FORMAT, "hcp kernel layout 0");
        assert_eq!(KernelLayout::parse(&old, "build-id ab12 btf 5000", &events), None);
    }

    #[test]
    fn finds_the_gnu_build_id_among_notes() {
        let note = |name: &[u8], kind: u32, desc: &[u8]| {
            let mut out = Vec::new();
            for w in [name.len() as u32, desc.len() as u32, kind] {
                out.extend(w.to_ne_bytes());
            }
            out.extend(name);
            out.resize(out.len().div_ceil(4) * 4, 0);
            out.extend(desc);
            out.resize(out.len().div_ceil(4) * 4, 0);
            out
        };
        let mut notes = note(b"Xen\0", 3, &[1, 2, 3]);
        notes.extend(note(b"GNU\0", 1, &[9; 16]));
        notes.extend(note(b"GNU\0", 3, &[0xde, 0xad, 0xbe, 0xef, 0x01]));
        assert_eq!(gnu_build_id(&notes).as_deref(), Some("deadbeef01"));
        assert_eq!(gnu_build_id(&notes[..notes.len() - 8]), None, "cut short");
        assert_eq!(gnu_build_id(&[]), None);
    }

    /// The struct literals below name every field: a field added to a
    /// layout fails to compile here until the cache's list has it too.
    #[test]
    fn the_cache_lists_every_field() {
        let (mut bio, mut ioctl, mut stall) = Default::default();
        for (_, field) in fields(&mut bio, &mut ioctl, &mut stall) {
            *field = 7;
        }
        #[rustfmt::skip]
        let all = (
            BioLayout { bio_device: 7, bio_bdev: 7, bio_disk: 7, bio_partno: 7, disk_part_tbl: 7, part_tbl_part: 7,
                part_dev: 7, bio_opf: 7, bio_size: 7, disk_major: 7, disk_first_minor: 7, rq_part: 7,
                rq_cmd_flags: 7, rq_data_len: 7, rq_disk_via_queue: 7, rq_q: 7, queue_disk: 7, rq_disk: 7,
                req_fua: 7, bio_queue_arg: 7, bio_remap_arg: 7, bio_remap_dev_arg: 7 },
            IoctlTpLayout { enter_fd: 7, enter_cmd: 7, enter_arg: 7, exit_ret: 7 },
            StallLayout { enter_id: 7, enter_args: 7, exit_ret: 7, task_files: 7, files_fdt: 7, fdt_max_fds: 7,
                fdt_fd: 7, file_inode: 7, inode_sb: 7, sb_dev: 7 },
        );
        assert_eq!((bio, ioctl, stall), all);
    }

    /// The running kernel's layout, found and read back through a cache.
    #[test]
    fn running_kernel_through_the_cache() {
        if !Path::new("/sys/kernel/btf/vmlinux").exists() {
            eprintln!("skipped: no kernel BTF");
            return;
        }
        let dir = std::env::temp_dir().join(format!("hcp-layout-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cache = dir.join("kernel-layout");
        let events = ["block_bio_queue", "block_rq_complete"];
        let found = KernelLayout::find(&events, Some(&cache)).unwrap();
        assert!(found.tp_btf.iter().all(|(_, id)| *id > 0));
        if found.ioctl.is_ok() && found.stall.is_ok() {
            assert!(cache.exists(), "a complete layout is kept");
            assert_eq!(KernelLayout::find(&events, Some(&cache)).unwrap(), found);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
