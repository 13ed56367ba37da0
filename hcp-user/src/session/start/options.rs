//! The options of `hcp start`, as the command line gives them.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::session::autoextend;
use crate::size::{ChunkSize, Quota};

#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    pub device: String,
    pub mount_point: Option<PathBuf>,
    pub read_only: bool,
    pub skip_mount: bool,
    /// `-c`: a block device, a directory, or a new file path.
    pub store: Option<PathBuf>,
    pub quota: Option<Quota>,
    pub chunk: ChunkSize,
    pub preallocate: bool,
    /// Grow a file store as it fills, up to the quota.
    pub autoextend: Option<autoextend::Spec>,
    /// With `autoextend`: the store's size at the start.
    pub store_size: Option<autoextend::StoreSize>,
    /// Measure what the session costs, in the kernel, for its whole life.
    pub trace: bool,
    /// With `trace`: how long to measure the origin before the snapshot.
    pub baseline: Duration,
    /// With `trace`: where `remove` writes the final report.
    pub report: Option<PathBuf>,
    /// With `trace`: how often the recorder reads the session's figures
    /// into its history (zero: the default, 1 s).
    pub history_interval: Duration,
}

impl StartOptions {
    /// The same options with `-m` and `-c` made absolute: they are recorded
    /// for later commands, which may run from anywhere.
    pub(super) fn with_absolute_paths(&self) -> Result<StartOptions> {
        let absolute = |p: &Option<PathBuf>| {
            p.as_deref()
                .map(|p| std::path::absolute(p).map_err(|e| Error::io(format!("resolving {}", p.display()), e)))
                .transpose()
        };
        Ok(StartOptions { mount_point: absolute(&self.mount_point)?, store: absolute(&self.store)?, ..self.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_point_and_store_are_recorded_absolute() {
        let opts = StartOptions {
            mount_point: Some("snap/mnt".into()),
            store: Some("/srv/cow".into()),
            ..StartOptions::default()
        };
        let abs = opts.with_absolute_paths().unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(abs.mount_point, Some(cwd.join("snap/mnt")));
        assert_eq!(abs.store, Some(PathBuf::from("/srv/cow")));
        assert_eq!(StartOptions::default().with_absolute_paths().unwrap().mount_point, None);
    }
}
