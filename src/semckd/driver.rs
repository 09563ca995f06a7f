//! Device addresses of one SemCKD call (the raw layer).

/// The device addresses of one call; filled in by the kernels' driver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SemckdRawBuffers {
    /// Student maps.
    pub student: Vec<u64>,
}
