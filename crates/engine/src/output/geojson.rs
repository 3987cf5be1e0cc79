//! QuPath-importable GeoJSON.
//!
//! In: analysed patches with their probabilities, and per-class thresholded regions (polygons in
//! level-0 pixels). Out: a `FeatureCollection` as QuPath (v0.4+) writes and reads it: every
//! patch a locked `tile` with `measurements` {`prob_<class>`}, every region an `annotation`
//! with a `classification` {`name`, `color`}; closed rings, coordinates in level-0 pixels
//! (y down) rounded to 2 decimals, `Polygon` for one part and `MultiPolygon` for several.
//! Feature ids are UUIDs derived from the content, so two runs write identical files.

use serde_json::{json, Map, Value};

use crate::grid::Patch;
use crate::stitch::Predictions;

/// A thresholded region of one class.
#[derive(Debug, Clone)]
pub struct Region {
    /// Class name.
    pub class: String,
    /// Classification colour.
    pub color: [u8; 3],
    /// Polygons: each an outer ring followed by its holes, in level-0 pixels.
    pub polygons: Vec<Vec<Vec<[f64; 2]>>>,
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// A deterministic version-4-shaped UUID from a string (FNV-1a based; ids need only be unique
/// within a file and stable across runs).
fn uuid_from(s: &str) -> String {
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x8422_2325_cbf2_9ce4;
    for byte in s.bytes() {
        a = (a ^ byte as u64).wrapping_mul(0x100_0000_01b3);
        b = (b ^ byte as u64)
            .wrapping_mul(0x100_0000_01b3)
            .rotate_left(7);
    }
    let mut x = ((a as u128) << 64) | b as u128;
    x = (x & !(0xF << 76)) | (0x4 << 76); // version 4
    x = (x & !(0x3 << 62)) | (0x2 << 62); // RFC 4122 variant
    let h = format!("{x:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Polygons (each an outer ring and its holes), serialised with 2-decimal coordinates.
struct Polygons<'a>(&'a [Vec<Vec<[f64; 2]>>]);

/// One polygon's rings.
struct Rings<'a>(&'a [Vec<[f64; 2]>]);

/// One ring's points.
struct Points<'a>(&'a [[f64; 2]]);

impl serde::Serialize for Polygons<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|p| Rings(p)))
    }
}

impl serde::Serialize for Rings<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|r| Points(r)))
    }
}

impl serde::Serialize for Points<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|p| [round2(p[0]), round2(p[1])]))
    }
}

fn ring(points: &[[f64; 2]]) -> Value {
    Value::Array(
        points
            .iter()
            .map(|p| json!([round2(p[0]), round2(p[1])]))
            .collect(),
    )
}

/// Serialises the FeatureCollection feature by feature (no document tree is held in memory,
/// which matters for slides with hundreds of thousands of patches).
pub fn feature_collection(
    patches: &[Patch],
    predictions: &Predictions,
    class_names: &[String],
    regions: &[Region],
) -> Vec<u8> {
    let mut out = br#"{"type":"FeatureCollection","features":["#.to_vec();
    let mut first = true;
    let mut push = |feature: Value| {
        if !first {
            out.push(b',');
        }
        first = false;
        // Serialising a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &feature);
    };
    for p in patches {
        let Some(probs) = predictions.get(&p.index) else {
            continue;
        };
        let (x0, y0) = (p.location.x as f64, p.location.y as f64);
        let (x1, y1) = (x0 + p.side as f64, y0 + p.side as f64);
        let mut m = Map::new();
        for (name, v) in class_names.iter().zip(probs) {
            m.insert(
                format!("prob_{name}"),
                json!((*v as f64 * 1e6).round() / 1e6),
            );
        }
        m.insert(
            "tissue_fraction".into(),
            json!((p.tissue_fraction * 1e4).round() / 1e4),
        );
        push(json!({
            "type": "Feature",
            "id": uuid_from(&format!("tile {} {}", p.index.col, p.index.row)),
            "geometry": {"type": "Polygon", "coordinates": [
                ring(&[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])
            ]},
            "properties": {"objectType": "tile", "isLocked": true, "measurements": m},
        }));
    }
    for (k, r) in regions.iter().enumerate() {
        if r.polygons.is_empty() {
            continue;
        }
        // Written piece by piece, the coordinates streamed from the polygons: a dense model's
        // region can have millions of points, which as a JSON value tree would take ~100 bytes
        // each. The bytes are those of the value tree (keys in order, compact).
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(br#"{"geometry":{"coordinates":"#);
        let kind = if r.polygons.len() == 1 {
            let _ = serde_json::to_writer(&mut out, &Rings(&r.polygons[0]));
            "Polygon"
        } else {
            let _ = serde_json::to_writer(&mut out, &Polygons(&r.polygons));
            "MultiPolygon"
        };
        out.extend_from_slice(format!(r#","type":"{kind}"}},"id":"#).as_bytes());
        let _ = serde_json::to_writer(&mut out, &uuid_from(&format!("region {k} {}", r.class)));
        out.extend_from_slice(br#","properties":"#);
        let _ = serde_json::to_writer(
            &mut out,
            &json!({
                "objectType": "annotation",
                "name": r.class,
                "classification": {"name": r.class, "color": r.color},
            }),
        );
        out.extend_from_slice(br#","type":"Feature"}"#);
    }
    out.extend_from_slice(b"]}");
    out
}

/// CRC-32 (IEEE, as gzip uses).
fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// `data` as a gzip member (RFC 1952), which QuPath reads from files named `*.geojson.gz`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    out.extend(miniz_oxide::deflate::compress_to_vec(data, 6));
    out.extend(crc32(data).to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geom::{GridIndex, Level0Px};

    #[test]
    fn gzip_round_trips_with_a_valid_checksum() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let text = b"{\"type\":\"FeatureCollection\",\"features\":[]}".repeat(50);
        let gz = gzip(&text);
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
        let body = &gz[10..gz.len() - 8];
        assert_eq!(miniz_oxide::inflate::decompress_to_vec(body).unwrap(), text);
        assert_eq!(&gz[gz.len() - 8..gz.len() - 4], &crc32(&text).to_le_bytes());
    }

    #[test]
    fn streamed_regions_are_the_bytes_of_the_value_tree() {
        let square = |x: f64| vec![[x, 0.0], [x + 1.0, 0.0], [x + 1.0, 1.0], [x, 0.0]];
        for polygons in [
            vec![vec![square(0.0), square(0.25)]],
            vec![vec![square(0.0)], vec![square(10.123456)]],
        ] {
            let region = Region {
                class: "tumour \"x\"".into(),
                color: [9, 8, 7],
                polygons,
            };
            let ours =
                feature_collection(&[], &Predictions::new(), &[], std::slice::from_ref(&region));
            let polys: Vec<Value> = region
                .polygons
                .iter()
                .map(|rings| Value::Array(rings.iter().map(|pts| ring(pts)).collect()))
                .collect();
            let geometry = if polys.len() == 1 {
                json!({"type": "Polygon", "coordinates": polys[0]})
            } else {
                json!({"type": "MultiPolygon", "coordinates": polys})
            };
            let tree = json!({
                "type": "Feature",
                "id": uuid_from(&format!("region 0 {}", region.class)),
                "geometry": geometry,
                "properties": {
                    "objectType": "annotation",
                    "name": region.class,
                    "classification": {"name": region.class, "color": region.color},
                },
            });
            let want = format!(
                r#"{{"type":"FeatureCollection","features":[{}]}}"#,
                serde_json::to_string(&tree).unwrap()
            );
            assert_eq!(String::from_utf8(ours).unwrap(), want);
        }
    }

    #[test]
    fn features_follow_qupaths_layout() {
        let patches = vec![Patch {
            index: GridIndex { col: 1, row: 2 },
            location: Level0Px::new(100, 200),
            side: 50,
            tissue_fraction: 0.75,
        }];
        let mut preds = Predictions::new();
        preds.insert(GridIndex { col: 1, row: 2 }, vec![0.25, 0.75]);
        let names = vec!["other".to_string(), "dense".to_string()];
        let region = Region {
            class: "dense".into(),
            color: [1, 2, 3],
            polygons: vec![vec![vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]]],
        };
        let fc: Value =
            serde_json::from_slice(&feature_collection(&patches, &preds, &names, &[region]))
                .unwrap();
        let f = &fc["features"];
        assert_eq!(fc["type"], "FeatureCollection");
        assert_eq!(f[0]["properties"]["objectType"], "tile");
        assert_eq!(f[0]["properties"]["isLocked"], true);
        assert_eq!(f[0]["properties"]["measurements"]["prob_dense"], 0.75);
        let ring = f[0]["geometry"]["coordinates"][0].as_array().unwrap();
        assert_eq!(ring.len(), 5);
        assert_eq!(ring[0], ring[4]);
        assert_eq!(ring[2], json!([150.0, 250.0]));
        assert_eq!(f[1]["properties"]["objectType"], "annotation");
        assert_eq!(
            f[1]["properties"]["classification"]["color"],
            json!([1, 2, 3])
        );
        assert_eq!(f[1]["geometry"]["type"], "Polygon");
        // Ids are UUIDs, stable across runs.
        let id = f[0]["id"].as_str().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        let again: Value =
            serde_json::from_slice(&feature_collection(&patches, &preds, &names, &[])).unwrap();
        assert_eq!(id, again["features"][0]["id"]);
    }
}
