//! scratch
use std::time::Instant;
#[fleet::remote]
fn small() -> Vec<u8> {
    b"ok".to_vec()
}
fn main() -> fleet::Result<()> {
    let _c = fleet::init()?;
    fleet::get(&small::remote())?;
    for _ in 0..3 {
        let t = Instant::now();
        let mut n = 0;
        while t.elapsed().as_secs_f64() < 2.0 {
            fleet::get(&small::remote())?;
            n += 1;
        }
        println!("sync {:.0}/s", n as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut n = 0;
        while t.elapsed().as_secs_f64() < 2.0 {
            let refs: Vec<_> = (0..1000).map(|_| small::remote()).collect();
            fleet::get_all(&refs)?;
            n += 1000;
        }
        println!("async {:.0}/s", n as f64 / t.elapsed().as_secs_f64());
    }
    Ok(())
}
