//! planet-init: PID 1 of the image's initramfs, which is the whole minimal host. It brings the
//! machine up (mounts, modules, disk, network), composes the Planet root and runs Planet in it.

pub mod console;

pub mod boot;
pub mod coldplug;
pub mod container_kernel;
pub mod datasource;
pub mod disk;
pub mod enter;
pub mod http;
pub mod launcher;
pub mod mounts;
pub mod net;
pub mod supervise;
#[allow(unsafe_code)]
pub mod sys;
pub mod update;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
