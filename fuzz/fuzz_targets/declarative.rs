//! Declarative files (`declarative`): arbitrary text read as YAML and as JSON, then read whole as a
//! configuration. Checked: nothing panics, whatever the nesting, aliases or values; a file that reads
//! whole is exported and the export reads back to as many entities.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::declarative;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for name in [Some("kong.yml"), Some("kong.json"), None] {
        let Ok(doc) = declarative::unserialize(&text, name) else { continue };
        let Ok(declared) = declarative::flatten(doc, &tollgate::plugins::Catalog) else { continue };
        let mut tables: Vec<(tollgate::model::Kind, Vec<serde_json::Map<String, serde_json::Value>>)> = Vec::new();
        for (kind, record) in &declared.entities {
            match tables.iter_mut().find(|(k, _)| k == kind) {
                Some((_, rows)) => rows.push(record.clone()),
                None => tables.push((*kind, vec![record.clone()])),
            }
        }
        let exported = declarative::export(&tables);
        let again = declarative::read(&exported, Some("kong.yml"), &tollgate::plugins::Catalog);
        let again = again.unwrap_or_else(|e| panic!("an export does not read back: {}\n{exported}", e.message()));
        assert_eq!(again.entities.len(), declared.entities.len());
    }
});
