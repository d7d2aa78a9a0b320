//! `metricpact package`: the filter module as an OCI image layout that Istio's Wasm image fetcher
//! accepts, written reproducibly (the same module gives the same bytes and the same digest).
//!
//! The image is what Istio's `pkg/wasm/imagefetcher.go` calls the "compat" variant, the shape
//! `FROM scratch` + `COPY plugin.wasm ./` builds: an OCI image manifest whose last (and only)
//! layer is `application/vnd.oci.image.layer.v1.tar+gzip` holding a file named exactly
//! `plugin.wasm`. (The fetcher also takes Docker schema-2 images, and the two-layer "oci variant"
//! with `application/vnd.module.wasm.content.layer.v1+wasm`; a single raw-wasm layer, or an
//! uncompressed tar layer such as `oras push` makes by default, is refused.)
//!
//! istio-agent verifies an `oci://` module against the image *manifest* digest it resolves, not
//! the .wasm file's sha256: [`Package::manifest_digest`] is the value `render --wasm-sha256` needs.
//! Native-only.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The only file name Istio's fetcher takes from the layer (`extractWasmPluginBinary`).
pub const PLUGIN_FILE: &str = "plugin.wasm";
/// The `index.json` annotation an OCI layout names a tag with (image-spec `image-layout.md`).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// One content-addressed blob.
pub struct Blob {
    pub media_type: &'static str,
    pub bytes: Vec<u8>,
}

impl Blob {
    /// `sha256:<hex>` of the bytes.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex(&Sha256::digest(&self.bytes)))
    }

    fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest(), "size": self.bytes.len()})
    }
}

/// The image of one module: config, layer and manifest blobs, and the tag naming it.
pub struct Package {
    pub tag: String,
    pub config: Blob,
    pub layer: Blob,
    pub manifest: Blob,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a module cannot be packaged.
#[derive(Debug)]
pub struct PackageError(pub String);

impl std::fmt::Display for PackageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tar holding `plugin.wasm`, every field that could vary between builds fixed (mtime 0,
/// owner 0:0, mode 0644, no user or group names).
fn layer_tar(module: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    header.set_size(module.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    let mut builder = tar::Builder::new(Vec::new());
    // The path is a constant that fits a ustar header: this cannot fail on an in-memory writer.
    builder.append_data(&mut header, PLUGIN_FILE, module).expect("in-memory tar");
    builder.into_inner().expect("in-memory tar")
}

/// gzip without a name or timestamp in its header, so the bytes depend on the input only.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new().mtime(0).operating_system(255).write(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).expect("in-memory gzip");
    encoder.finish().expect("in-memory gzip")
}

impl Package {
    /// Packages `module` (the bytes of metricpact.wasm) under `tag`.
    pub fn new(module: &[u8], tag: &str) -> Result<Package, PackageError> {
        if module.len() < 8 || &module[..4] != b"\0asm" {
            return Err(PackageError("not a WebAssembly module (no \\0asm magic number)".into()));
        }
        if !is_valid_tag(tag) {
            return Err(PackageError(format!(
                "`{tag}` is not a valid OCI tag (up to 128 of [A-Za-z0-9_.-], not starting with `.` or `-`)"
            )));
        }
        let tar = layer_tar(module);
        let diff_id = format!("sha256:{}", hex(&Sha256::digest(&tar)));
        let layer = Blob { media_type: LAYER_MEDIA_TYPE, bytes: gzip(&tar) };
        // An image config as the OCI image spec requires it (architecture, os, rootfs); Docker's
        // convention for Wasm images is os `wasi`, architecture `wasm`. Nothing time-dependent.
        let config = Blob {
            media_type: CONFIG_MEDIA_TYPE,
            bytes: serde_json::to_vec(&json!({
                "architecture": "wasm",
                "os": "wasi",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            }))
            .expect("JSON of a literal"),
        };
        let manifest = Blob {
            media_type: MANIFEST_MEDIA_TYPE,
            bytes: serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "config": config.descriptor(),
                "layers": [layer.descriptor()],
            }))
            .expect("JSON of a literal"),
        };
        Ok(Package { tag: tag.to_string(), config, layer, manifest })
    }

    /// `sha256:<hex>` of the manifest: what istio-agent compares an `oci://` module against.
    pub fn manifest_digest(&self) -> String {
        self.manifest.digest()
    }

    fn index(&self) -> Value {
        let mut descriptor = self.manifest.descriptor();
        descriptor["annotations"] = json!({REF_NAME_ANNOTATION: self.tag});
        json!({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [descriptor]})
    }

    /// Writes the image layout into `dir` (created if missing). A directory that holds anything
    /// but an earlier layout is refused; an earlier layout is replaced, stale blobs included.
    pub fn write_layout(&self, dir: &Path) -> Result<(), PackageError> {
        let io = |what: &str, path: &Path, e: std::io::Error| PackageError(format!("{what} {}: {e}", path.display()));
        if dir.exists() {
            let entries: Vec<_> = std::fs::read_dir(dir).map_err(|e| io("cannot read", dir, e))?.flatten().map(|e| e.file_name()).collect();
            let ours = ["oci-layout", "index.json", "blobs"];
            if !entries.is_empty() && (!dir.join("oci-layout").is_file() || entries.iter().any(|n| !ours.iter().any(|o| n == o))) {
                return Err(PackageError(format!("{} exists and is not an OCI image layout: refusing to write into it", dir.display())));
            }
            let blobs = dir.join("blobs");
            if blobs.exists() {
                std::fs::remove_dir_all(&blobs).map_err(|e| io("cannot remove", &blobs, e))?;
            }
        }
        let blob_dir = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blob_dir).map_err(|e| io("cannot create", &blob_dir, e))?;
        for blob in [&self.config, &self.layer, &self.manifest] {
            let path = blob_dir.join(blob.digest().trim_start_matches("sha256:"));
            std::fs::write(&path, &blob.bytes).map_err(|e| io("cannot write", &path, e))?;
        }
        let write_json = |name: &str, value: &Value| {
            let path = dir.join(name);
            std::fs::write(&path, serde_json::to_vec(value).expect("JSON of a value")).map_err(|e| io("cannot write", &path, e))
        };
        write_json("oci-layout", &json!({"imageLayoutVersion": "1.0.0"}))?;
        write_json("index.json", &self.index())
    }
}

/// An OCI distribution-spec tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
fn is_valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0 a tiny module";

    #[test]
    fn the_same_module_gives_the_same_bytes() {
        let (a, b) = (Package::new(MODULE, "1.0").unwrap(), Package::new(MODULE, "1.0").unwrap());
        assert_eq!(a.manifest.bytes, b.manifest.bytes);
        assert_eq!(a.layer.bytes, b.layer.bytes);
        assert_ne!(Package::new(b"\0asm\x01\0\0\0 another", "1.0").unwrap().manifest_digest(), a.manifest_digest());
    }

    #[test]
    fn the_layer_holds_plugin_wasm_and_the_descriptors_match_their_blobs() {
        let p = Package::new(MODULE, "1.0").unwrap();
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(p.layer.bytes.as_slice()).read_to_end(&mut tar).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some(PLUGIN_FILE));
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        assert_eq!(content, MODULE);
        drop(entry);
        assert!(entries.next().is_none());
        let manifest: Value = serde_json::from_slice(&p.manifest.bytes).unwrap();
        assert_eq!(manifest["layers"][0]["digest"], p.layer.digest());
        assert_eq!(manifest["layers"][0]["size"], p.layer.bytes.len());
        assert_eq!(manifest["config"]["digest"], p.config.digest());
        let config: Value = serde_json::from_slice(&p.config.bytes).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], format!("sha256:{}", hex(&Sha256::digest(&tar))));
    }

    #[test]
    fn refuses_what_is_not_a_module_or_a_tag() {
        assert!(Package::new(b"not wasm at all", "1.0").err().unwrap().0.contains("not a WebAssembly module"));
        for tag in ["", "-x", ".x", "a/b", "a:b", &"x".repeat(129)] {
            assert!(Package::new(MODULE, tag).is_err(), "{tag:?}");
        }
        assert!(Package::new(MODULE, "0.1.0_rc-1").is_ok());
    }
}
