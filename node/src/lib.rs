//! planet-node: the code that runs *inside* the Planet container of a Kubernetes release.
//!
//! planet-init (the host) starts the container's systemd and writes what it learnt from the
//! cloud-init data to `/etc/container-environment`. From there this crate takes over:
//! `planet-node setup` (a oneshot unit before everything else) makes the cluster PKI and
//! kubeconfigs on first boot, writes the per-role configuration the stock units read, and starts
//! the role's target; `planet-node load-images` puts the images the release ships into docker
//! (no registry is ever asked); `planet-node health` is the check planet-init runs to decide
//! whether the machine is healthy.

pub mod cluster;
pub mod env;
pub mod files;
pub mod health;
pub mod images;
pub mod pki;
pub mod render;
pub mod setup;
