//! `spire-server`: the SPIRE server binary.

fn main() {
    eprintln!("Error: spire-server is not implemented yet");
    std::process::exit(1);
}
