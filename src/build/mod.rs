//! `planet-image build`: plan the disk (pure), then run the pipeline stages.

pub mod pipeline;
