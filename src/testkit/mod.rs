//! Test traffic for the tools, the tests and the benchmarks: [`synth`] builds
//! traces of a given shape, [`loadgen`] drives realistic scenarios.

pub mod faults;
pub mod loadgen;
pub mod synth;
