//! Tessera's integration tests: one binary, one module per area.
//!
//! Real slides come from `../shared/testdata` (or `$TESSERA_TESTDATA`). Tests that need it, or
//! need OpenSlide, print why they skip when it is absent, and fail when `CI=true`.

mod browser;
mod container;
mod orthanc;
mod util;

mod analyze;
mod cli;
mod cohort;
mod dicom;
mod dicomweb;
mod gpu;
mod hostile;
mod models;
mod parity;
mod qc;
mod report;
mod serve;
mod slides;
mod slurm;
mod tissue;
mod watch;
