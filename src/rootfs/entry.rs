//! One filesystem object of a rootfs, independent of where it was read from.

/// The kind of object and what only that kind carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File {
        size: u64,
    },
    Directory,
    Symlink {
        target: String,
    },
    /// A hard link to an earlier regular file (path relative to the root).
    HardLink {
        target: String,
    },
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the root, no leading `./` or `/`; empty for the root itself.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (no file-type bits).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// Extended attributes in name order.
    pub xattrs: Vec<(String, Vec<u8>)>,
}
