//! Lists the datasets of a .keras file's weights (debug aid).
use std::io::Read;
fn walk(g: &hdf5_reader::group::Group, prefix: &str) {
    let (groups, datasets) = g.members().expect("members");
    for d in datasets {
        println!("{prefix}/{} {:?}", d.name(), d.shape());
    }
    for sub in groups {
        let name = format!("{prefix}/{}", sub.name());
        walk(&sub, &name);
    }
}
fn main() {
    let path = std::env::args().nth(1).expect("path");
    let f = std::fs::File::open(path).expect("open");
    let mut z = zip::ZipArchive::new(f).expect("zip");
    let mut e = z.by_name("model.weights.h5").expect("entry");
    let mut buf = Vec::new();
    e.read_to_end(&mut buf).expect("read");
    let h = hdf5_reader::Hdf5File::from_vec(buf).expect("h5");
    walk(&h.root_group().expect("root"), "");
}
