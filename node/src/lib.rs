//! planet-node: the code that runs *inside* the Planet container of a Kubernetes release.
//!
//! planet-init (the host) starts the container's systemd and writes what it learnt from the
//! cloud-init data to `/etc/container-environment`. From there this crate takes over:
//! `planet-node setup` (a oneshot unit before everything else) makes the cluster PKI and
//! kubeconfigs on first boot, writes the per-role configuration the stock units read, and starts
//! the role's target; `planet-node load-images` puts the images the release ships into docker
//! (no registry is ever asked); `planet-node health` is the check planet-init runs to decide
//! whether the machine is healthy. Across machines: a master's `join-server` lets nodes with
//! the cluster's join token check it and join ([`join`], [`csr`]); on every machine `routes`
//! keeps the pod network's routes in step with the Nodes ([`routes`]) and `dns` serves the
//! Services' names ([`dns`]). The apps the slot carries: their images are loaded with the
//! release's, and a master applies them and watches their health ([`apps`]).

pub mod api;
pub mod apps;
pub mod cluster;
pub mod csr;
pub mod dns;
pub mod env;
pub mod files;
pub mod health;
pub mod http_head;
pub mod images;
pub mod join;
pub mod kubectl;
pub mod pki;
pub mod render;
pub mod rollout;
pub mod routes;
pub mod setup;
