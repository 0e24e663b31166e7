fn main() {
    println!("planet-init: started version={}", env!("CARGO_PKG_VERSION"));
}
