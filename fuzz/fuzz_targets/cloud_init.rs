//! Cloud-init data as planet-init reads it from a datasource: user-data (gzip, MIME multipart,
//! base64, YAML), network-config v2, OpenStack's network_data.json and meta_data.json.
#![no_main]
use libfuzzer_sys::fuzz_target;
use planet_config::cloudconfig::{self, NicInfo};

fuzz_target!(|data: &[u8]| {
    let Some((which, rest)) = planet_fuzz::select(data, 4) else { return };
    match which {
        0 => {
            let _ = cloudconfig::user_data_config(rest);
        }
        1 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = cloudconfig::parse_network_config(text);
            }
        }
        2 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let nics = [
                    NicInfo { name: "eth0".into(), mac: "52:54:00:12:34:56".into() },
                    NicInfo { name: "enp0s31f6".into(), mac: "fa:16:3e:00:00:01".into() },
                ];
                let _ = cloudconfig::parse_openstack_network(text, &nics);
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = cloudconfig::parse_openstack_meta_data(text);
            }
        }
    }
});
