//! A small, real disk to fail on purpose: an ext4 filesystem (`errors=remount-ro`, as usual) in an
//! image file on a tmpfs of its own, mounted through a loop device (root only). A test can fill
//! the filesystem until writes fail with ENOSPC and free it again; or fail the device under it —
//! the tmpfs shrunk to what it holds, as a thin-provisioned volume whose pool ran out — so that
//! writes to it fail with EIO and ext4, as it does after an I/O error, aborts its journal and
//! turns read-only; then heal the device, repair the filesystem (e2fsck) and mount it again, as an
//! operator would. (ext4's `trigger_fs_error` knob is not used: it aborts the journal under a
//! commit in flight and loses data an fsync had reported durable, which no program can defend
//! against; a failing device does not.) Everything is unmounted when dropped.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::sh;

/// The tools [`LoopDisk`] runs (`privileged::require` them).
pub const TOOLS: &[&str] = &["mkfs.ext4", "e2fsck", "mount", "umount", "df"];

pub struct LoopDisk {
    _dir: tempfile::TempDir,
    /// The tmpfs holding the image: the device's backing store.
    backing: PathBuf,
    backing_mib: u64,
    image: PathBuf,
    mount: PathBuf,
}

impl LoopDisk {
    /// A fresh ext4 filesystem of `mib` MiB, mounted.
    pub fn new(mib: u64) -> LoopDisk {
        let dir = tempfile::tempdir().expect("temporary directory");
        let backing = dir.path().join("backing");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&backing).expect("backing mount point");
        std::fs::create_dir(&mount).expect("mount point");
        let backing_mib = mib + 16;
        sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={backing_mib}m"),
            "tmpfs",
            path(&backing),
        ]);
        let image = backing.join("disk.img");
        sh(&["truncate", "-s", &format!("{mib}M"), path(&image)]);
        sh(&["mkfs.ext4", "-q", "-F", path(&image)]);
        let disk = LoopDisk {
            _dir: dir,
            backing,
            backing_mib,
            image,
            mount,
        };
        disk.mount();
        disk
    }

    fn mount(&self) {
        sh(&[
            "mount",
            "-o",
            "loop,errors=remount-ro",
            path(&self.image),
            path(&self.mount),
        ]);
    }

    /// The mounted filesystem's root.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }

    /// Writes a file until the filesystem has no room left (ENOSPC); returns the bytes written.
    pub fn fill(&self) -> u64 {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .expect("filler file");
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut written = 0;
        // Bounded: the disk is small. Then by the byte, for the last partial chunk.
        for size in [chunk.len(), 4096, 1] {
            while f.write_all(&chunk[..size]).is_ok() {
                written += size as u64;
                assert!(written < 1 << 34, "the filesystem never filled");
            }
        }
        let _ = f.sync_all();
        written
    }

    /// Deletes what [`LoopDisk::fill`] wrote.
    pub fn free(&self) {
        std::fs::remove_file(self.filler()).expect("removing the filler file");
    }

    /// Fails the device: its backing store takes no new block from now on, so writes that need
    /// one fail with EIO — the filesystem's journal among them, after which ext4 is read-only.
    pub fn fail_device(&self) {
        // The store may grow between reading its use and shrinking it to that: read again.
        for _ in 0..50 {
            let stat = std::process::Command::new("df")
                .args(["--output=used", "-k", path(&self.backing)])
                .output()
                .expect("df");
            let used: u64 = String::from_utf8_lossy(&stat.stdout)
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse().ok())
                .expect("df's used KiB");
            let shrunk = std::process::Command::new("mount")
                .args(["-o", &format!("remount,size={used}k"), path(&self.backing)])
                .output()
                .expect("mount");
            if shrunk.status.success() {
                return;
            }
        }
        panic!("the backing tmpfs could not be shrunk to what it holds");
    }

    /// The device takes writes again (the filesystem stays read-only until [`LoopDisk::repair`]).
    pub fn heal_device(&self) {
        let size = format!("remount,size={}m", self.backing_mib);
        sh(&["mount", "-o", &size, path(&self.backing)]);
    }

    /// Unmounts, repairs with e2fsck and mounts again (nothing may have the filesystem open).
    pub fn repair(&self) {
        sh(&["umount", path(&self.mount)]);
        // Exit status 1 means "errors corrected": not a failure here.
        let status = std::process::Command::new("e2fsck")
            .args(["-f", "-y", path(&self.image)])
            .output()
            .expect("e2fsck");
        assert!(
            status.status.code().is_some_and(|c| c <= 1),
            "e2fsck: {}",
            String::from_utf8_lossy(&status.stdout)
        );
        self.mount();
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        // Lazy: a process the test failed to stop may still hold it. The loop device goes with the
        // last user (mount -o loop sets autoclear).
        for mount in [&self.mount, &self.backing] {
            let _ = std::process::Command::new("umount")
                .args(["-l", path(mount)])
                .output();
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}
