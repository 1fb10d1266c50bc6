//! Slow: builds the rescue system with mmdebstrap (root, network to a
//! Debian mirror) and checks what the installer relies on is in it.

use std::path::PathBuf;

#[test]
#[ignore = "slow: builds the rescue system with mmdebstrap"]
fn builds_a_cached_rescue_system() {
    let cache = std::env::var_os("KILN_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tmp/cache"));
    let host = kiln_deploy::ovh::simulate::rescue::rescue_request(std::path::Path::new("/etc")).unwrap();
    let r = kiln_deploy::ovh::simulate::rescue::ensure_rescue(&cache, &host, |_| {}).unwrap();
    for f in [&r.kernel, &r.initrd, &r.rootfs] {
        assert!(f.metadata().unwrap().len() > 1 << 20, "{} is too small", f.display());
    }
    // Cached: the second call returns at once with the same files.
    let again = kiln_deploy::ovh::simulate::rescue::ensure_rescue(&cache, &host, |_| panic!("rebuilt")).unwrap();
    assert_eq!(again.rootfs, r.rootfs);
    let ls = kiln_exec::Cmd::new("debugfs")
        .args(["-R", "stat /usr/local/sbin/kiln-rescue-init"])
        .arg(&r.rootfs)
        .run()
        .unwrap()
        .stdout_string();
    assert!(ls.contains("Mode:  0755"), "{ls}");
}
