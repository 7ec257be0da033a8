//! go-pretty's default table as WAL-G's `wal-show`, `wal-verify` and
//! `backup-list --pretty` print it: `+---+` rules above and below the header and at the end, header
//! upper-case, numeric columns (header included) right-aligned, the rest
//! left-aligned.

/// `right[c]` says whether column `c` is numeric (right-aligned).
pub fn render(header: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = header.iter().map(|h| h.to_uppercase()).collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            std::iter::once(&header)
                .chain(rows.iter())
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (c, w) in widths.iter().enumerate() {
            let cell = cells.get(c).map_or("", String::as_str);
            let pad = " ".repeat(w - cell.chars().count());
            if right.get(c).copied().unwrap_or(false) {
                s.push_str(&format!("| {pad}{cell} "));
            } else {
                s.push_str(&format!("| {cell}{pad} "));
            }
        }
        s.push_str("|\n");
        s
    };
    let mut out = rule.clone();
    out.push_str(&line(&header));
    out.push_str(&rule);
    for r in rows {
        out.push_str(&line(r));
    }
    out.push_str(&rule);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_the_seed_readme() {
        let t = render(
            &["TLI", "Start", "End", "Segments count", "Status"],
            &[true, false, false, true, true],
            &[vec![
                "3".into(),
                "00000003000000030000004D".into(),
                "0000000300000004000000F0".into(),
                "420".into(),
                "FOUND".into(),
            ]],
        );
        assert_eq!(
            t,
            "+-----+--------------------------+--------------------------+----------------+--------+\n\
             | TLI | START                    | END                      | SEGMENTS COUNT | STATUS |\n\
             +-----+--------------------------+--------------------------+----------------+--------+\n\
             |   3 | 00000003000000030000004D | 0000000300000004000000F0 |            420 |  FOUND |\n\
             +-----+--------------------------+--------------------------+----------------+--------+\n"
        );
    }
}
