//! The kernel layouts hcp's programs read, found for the running kernel and
//! filled into their read-only globals at load ([`super::object::load`]):
//! struct member offsets from BTF, and tracepoint record offsets from
//! tracefs formats. A layout the running kernel does not match fails the
//! load with the field named, never a program reading the wrong bytes.

use std::path::Path;

use anyhow::{Context, Result};
use hcp_common::bio::BioLayout;
use hcp_common::freeze::IoctlTpLayout;
use hcp_common::stall::StallLayout;

use super::btf::KernelBtf;
use super::tracefs;

/// The offsets of the kernel struct fields the block programs read, and
/// the request flag they test.
pub fn bio(btf: &KernelBtf) -> Result<BioLayout> {
    let fua_bit = btf.enum_value("__REQ_FUA")?;
    anyhow::ensure!((0..32).contains(&fua_bit), "__REQ_FUA is bit {fua_bit}, outside a 32-bit blk_opf_t");
    Ok(BioLayout {
        bio_bdev: sized_offset(btf, "bio.bi_bdev", 8)?,
        bio_opf: sized_offset(btf, "bio.bi_opf", 4)?,
        bio_size: sized_offset(btf, "bio.bi_iter.bi_size", 4)?,
        bdev_dev: sized_offset(btf, "block_device.bd_dev", 4)?,
        disk_major: sized_offset(btf, "gendisk.major", 4)?,
        disk_first_minor: sized_offset(btf, "gendisk.first_minor", 4)?,
        rq_part: sized_offset(btf, "request.part", 8)?,
        rq_cmd_flags: sized_offset(btf, "request.cmd_flags", 4)?,
        rq_data_len: sized_offset(btf, "request.__data_len", 4)?,
        rq_q: sized_offset(btf, "request.q", 8)?,
        queue_disk: sized_offset(btf, "request_queue.disk", 8)?,
        req_fua: 1 << fua_bit,
    })
}

/// The offset of the kernel struct member `path`, checked to be `size`
/// bytes, the width the program reads.
fn sized_offset(btf: &KernelBtf, path: &str, size: u32) -> Result<u32> {
    let found = btf.member_size(path)?;
    anyhow::ensure!(found == size, "kernel field {path} is {found} bytes, hcp reads {size}");
    Ok(btf.member_offset(path)?)
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
}
