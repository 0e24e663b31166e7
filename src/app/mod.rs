//! Apps: Kubernetes manifests and the container images they run, carried inside the image so
//! a machine starts them with no registry. `app build` checks an app's directory and packs it
//! ([`package`]); `build --app` and `bundle --app` stream packages into the slot, where the
//! release's planet-node loads the images and the master applies the manifests. The format
//! and the slot paths are the contract in `planet_config::app`. See docs/apps.md.

pub mod archive;
pub mod manifests;
pub mod package;

pub use package::{add_to_slot, build, BuildReport, SlotSink};
