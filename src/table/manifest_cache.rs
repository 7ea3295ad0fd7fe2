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

/// A map bounded by the bytes its values hold, shared by its clones. Past
/// its bytes it is emptied and filled again: a simple bound is worth more
/// to the caches of immutable files that use it than the few hits an
/// eviction order would save. The default keeps nothing.
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    inner: Arc<Mutex<Entries<K, V>>>,
    max_bytes: usize,
}

#[derive(Debug)]
struct Entries<K, V> {
    map: HashMap<K, (V, usize)>,
    bytes: usize,
}

impl<K, V> Default for Entries<K, V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            bytes: 0,
        }
    }
}

impl<K, V> Clone for BoundedMap<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            max_bytes: self.max_bytes,
        }
    }
}

impl<K, V> Default for BoundedMap<K, V> {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Entries::default())),
            max_bytes: 0,
        }
    }
}

impl<K: Eq + std::hash::Hash, V: Clone> BoundedMap<K, V> {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            ..Self::default()
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries<K, V>> {
        // Entries are inserted whole: a panic elsewhere leaves them usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + std::hash::Hash + ?Sized,
    {
        self.entries().map.get(key).map(|(v, _)| v.clone())
    }

    /// Keeps `value`, counted as `bytes`; one larger than the whole map is
    /// not kept, nor does it empty the map.
    pub fn keep(&self, key: K, value: V, bytes: usize) {
        if bytes > self.max_bytes {
            return;
        }
        let mut entries = self.entries();
        if entries.bytes + bytes > self.max_bytes {
            *entries = Entries::default();
        }
        entries.bytes += bytes;
        if let Some((_, replaced)) = entries.map.insert(key, (value, bytes)) {
            entries.bytes -= replaced;
        }
    }

    pub fn forget<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + std::hash::Hash + ?Sized,
    {
        let mut entries = self.entries();
        if let Some((_, bytes)) = entries.map.remove(key) {
            entries.bytes -= bytes;
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.entries().bytes
    }
}

/// What the storage has read of manifests, by path, shared by every storage
/// one factory builds.
pub type ManifestCache = BoundedMap<String, Bytes>;

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
        self.cache
            .keep(path.to_string(), content.clone(), content.len());
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

    /// Keeps contents at their length, as the storage does.
    struct Sized(ManifestCache);

    impl std::ops::Deref for Sized {
        type Target = ManifestCache;
        fn deref(&self) -> &ManifestCache {
            &self.0
        }
    }

    impl Sized {
        fn keep(&self, path: &str, content: &Bytes) {
            self.0
                .keep(path.to_string(), content.clone(), content.len());
        }
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
        let cache = Sized(ManifestCache::new(10));
        cache.keep("a.avro", &Bytes::from_static(b"123456"));
        cache.keep("b.avro", &Bytes::from_static(b"1234"));
        assert_eq!(cache.bytes(), 10);
        cache.keep("c.avro", &Bytes::from_static(b"12"));
        assert_eq!(cache.bytes(), 2, "emptied, then c kept");
        assert!(cache.get("a.avro").is_none() && cache.get("c.avro").is_some());
        cache.keep("d.avro", &Bytes::from_static(b"12345678901"));
        assert!(cache.get("d.avro").is_none(), "larger than the cache");
        assert_eq!(cache.bytes(), 2);
        let off = Sized(ManifestCache::default());
        off.keep("a.avro", &Bytes::from_static(b"1"));
        assert_eq!(off.bytes(), 0, "the default keeps nothing");
    }
}
