//! `spire-agent`: the SPIRE agent binary.

fn main() {
    eprintln!("Error: spire-agent is not implemented yet");
    std::process::exit(1);
}
