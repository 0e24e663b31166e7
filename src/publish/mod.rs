//! Publishing built images to clouds: `aws` (EBS direct APIs + RegisterImage).

pub mod aws;
