//! Publishing built images to clouds: `aws` (EBS direct APIs + RegisterImage), `gce` (Cloud
//! Storage resumable upload + images.insert).

pub mod aws;
pub mod gce;
