//! What the builder reads from files it is handed: rootfs tarballs (plain or gzip), Debian
//! packages and kernel modules. The bytes go through a file on tmpfs because the readers take
//! paths, as the builder does.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};

fn scratch_file(bytes: &[u8]) -> std::path::PathBuf {
    let dir = std::env::var_os("PLANET_FUZZ_SCRATCH").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("planet-fuzz-{}.in", std::process::id()));
    let mut f = std::fs::File::create(&path).expect("scratch file");
    f.write_all(bytes).expect("scratch write");
    path
}

fuzz_target!(|data: &[u8]| {
    let Some((which, rest)) = planet_fuzz::select(data, 3) else { return };
    match which {
        0 => {
            let path = scratch_file(rest);
            if let Ok(source) = planet_image::rootfs::RootfsSource::detect(&path) {
                let _ = source.stream_canonical_tar(std::io::sink(), &[]);
            }
        }
        1 => {
            let path = scratch_file(rest);
            let _ = planet_image::deb::for_each_data_entry(&path, |_, _, r| {
                std::io::copy(&mut (&mut *r).take(1 << 20), &mut std::io::sink())?;
                Ok(())
            });
            let _ = planet_image::deb::control_fields(&path);
        }
        _ => {
            let _ = planet_image::kernel::modinfo(rest);
        }
    }
});
