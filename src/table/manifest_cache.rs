//! Iceberg storage that keeps the manifest lists and manifests it has read.
//!
//! iceberg-rust caches manifests per `Table`, and a `Table` is built anew
//! on every load from the catalog, so each lookup, search window and SQL
//! scan read every manifest of the current snapshot again: one per append
//! since the last compaction, a few hundred at seven commits a second, two
//! at a time. Manifest lists and manifests are never changed once written
//! (a commit writes new ones under new names), so what was read once can be
//! served from memory to every later `Table` of the catalog. Data files and
//! `metadata.json` pass through untouched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig,
    StorageFactory,
};
use serde::{Deserialize, Serialize};

/// Manifest lists (`snap-….avro`) and manifests (`….avro`): Avro files under
/// a table's `metadata/`, immutable once written.
fn is_manifest(path: &str) -> bool {
    path.ends_with(".avro")
}

/// What the storage has read of manifests, up to a number of bytes, shared
/// by every storage one factory builds. Past its bytes it is emptied and
/// filled again: a manifest of a snapshot that expired stays until then.
#[derive(Debug, Clone, Default)]
pub struct ManifestCache {
    inner: Arc<Mutex<Entries>>,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Entries {
    files: HashMap<String, Bytes>,
    bytes: usize,
}

impl ManifestCache {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Arc::default(),
            max_bytes,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Entries are inserted whole: a panic elsewhere leaves them usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, path: &str) -> Option<Bytes> {
        self.entries().files.get(path).cloned()
    }

    fn keep(&self, path: &str, content: &Bytes) {
        if content.len() > self.max_bytes {
            return;
        }
        let mut entries = self.entries();
        if entries.bytes + content.len() > self.max_bytes {
            *entries = Entries::default();
        }
        entries.bytes += content.len();
        entries.files.insert(path.to_string(), content.clone());
    }

    fn forget(&self, path: &str) {
        let mut entries = self.entries();
        if let Some(gone) = entries.files.remove(path) {
            entries.bytes -= gone.len();
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.entries().bytes
    }
}

/// Builds storages of `inner` that share one [`ManifestCache`].
///
/// Serialized (iceberg can ship a `FileIO` elsewhere), it carries only
/// `inner`: the copy starts with a cache that keeps nothing.
#[derive(Debug, Serialize, Deserialize)]
pub struct CachingStorageFactory {
    inner: Arc<dyn StorageFactory>,
    #[serde(skip)]
    cache: ManifestCache,
}

impl CachingStorageFactory {
    pub fn new(inner: Arc<dyn StorageFactory>, cache: ManifestCache) -> Self {
        Self { inner, cache }
    }
}

#[typetag::serde]
impl StorageFactory for CachingStorageFactory {
    fn build(&self, config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(CachingStorage {
            inner: self.inner.build(config)?,
            cache: self.cache.clone(),
        }))
    }
}

/// A storage whose whole-file reads of manifests go through the cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachingStorage {
    inner: Arc<dyn Storage>,
    #[serde(skip)]
    cache: ManifestCache,
}

#[async_trait]
#[typetag::serde]
impl Storage for CachingStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        self.inner.exists(path).await
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        self.inner.metadata(path).await
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        if !is_manifest(path) {
            return self.inner.read(path).await;
        }
        if let Some(content) = self.cache.get(path) {
            return Ok(content);
        }
        let content = self.inner.read(path).await?;
        self.cache.keep(path, &content);
        Ok(content)
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        self.inner.reader(path).await
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        // Never rewritten by Iceberg; forgotten anyway, should anyone.
        self.cache.forget(path);
        self.inner.write(path, bs).await
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        self.cache.forget(path);
        self.inner.writer(path).await
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        self.cache.forget(path);
        self.inner.delete(path).await
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        self.inner.delete_prefix(path).await
    }

    async fn delete_stream(&self, paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        self.inner.delete_stream(paths).await
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceberg::io::FileIOBuilder;

    fn file_io(cache: &ManifestCache) -> iceberg::io::FileIO {
        let factory =
            CachingStorageFactory::new(Arc::new(iceberg::io::LocalFsStorageFactory), cache.clone());
        FileIOBuilder::new(Arc::new(factory)).build()
    }

    #[tokio::test]
    async fn manifests_are_read_once_and_other_files_every_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let at = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let (manifest, data) = (at("snap-1.avro"), at("data.parquet"));
        std::fs::write(&manifest, b"first").expect("write");
        std::fs::write(&data, b"first").expect("write");
        let cache = ManifestCache::new(1024);
        let io = file_io(&cache);
        let read = |path: String| {
            let io = io.clone();
            async move {
                io.new_input(&path)
                    .expect("input")
                    .read()
                    .await
                    .expect("read")
            }
        };
        assert_eq!(read(manifest.clone()).await, Bytes::from_static(b"first"));
        assert_eq!(read(data.clone()).await, Bytes::from_static(b"first"));
        assert_eq!(cache.bytes(), 5, "the manifest alone is kept");
        // Changed behind the storage's back (Iceberg never does this): the
        // manifest comes from the cache, the data file from the disk.
        std::fs::write(&manifest, b"second").expect("write");
        std::fs::write(&data, b"second").expect("write");
        assert_eq!(read(manifest.clone()).await, Bytes::from_static(b"first"));
        assert_eq!(read(data).await, Bytes::from_static(b"second"));
        // A second FileIO of the same cache (a table loaded again) shares it.
        let again = file_io(&cache);
        let content = again.new_input(&manifest).expect("input").read().await;
        assert_eq!(content.expect("read"), Bytes::from_static(b"first"));
        // Deleting through the storage forgets it.
        io.delete(&manifest).await.expect("delete");
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = ManifestCache::new(10);
        cache.keep("a.avro", &Bytes::from_static(b"123456"));
        cache.keep("b.avro", &Bytes::from_static(b"1234"));
        assert_eq!(cache.bytes(), 10);
        cache.keep("c.avro", &Bytes::from_static(b"12"));
        assert_eq!(cache.bytes(), 2, "emptied, then c kept");
        assert!(cache.get("a.avro").is_none() && cache.get("c.avro").is_some());
        cache.keep("d.avro", &Bytes::from_static(b"12345678901"));
        assert!(cache.get("d.avro").is_none(), "larger than the cache");
        assert_eq!(cache.bytes(), 2);
        let off = ManifestCache::default();
        off.keep("a.avro", &Bytes::from_static(b"1"));
        assert_eq!(off.bytes(), 0, "the default keeps nothing");
    }
}
