//! Apache `AuthGroupFile` format: `group: user1 user2 ...`, one group per line; a group
//! may span several lines (their members are merged); `#` starts a comment line.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default, Clone)]
pub struct GroupFile {
    by_user: BTreeMap<String, Vec<String>>,
}

impl GroupFile {
    pub fn parse(text: &str) -> Result<GroupFile, String> {
        let mut by_user: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (index, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((group, members)) = trimmed.split_once(':') else {
                return Err(format!(
                    "line {}: expected \"group: user1 user2\", found no ':'",
                    index + 1
                ));
            };
            let group = group.trim();
            if group.is_empty()
                || group.contains(|c: char| c.is_whitespace() || c.is_control() || c == ',')
            {
                return Err(format!(
                    "line {}: group names cannot be empty or contain spaces, commas or control characters",
                    index + 1
                ));
            }
            for user in members.split_whitespace() {
                by_user
                    .entry(user.to_string())
                    .or_default()
                    .insert(group.to_string());
            }
        }
        Ok(GroupFile {
            by_user: by_user
                .into_iter()
                .map(|(u, g)| (u, g.into_iter().collect()))
                .collect(),
        })
    }

    /// The user's groups, sorted.
    pub fn groups_of(&self, user: &str) -> &[String] {
        self.by_user.get(user).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apache_group_files() {
        let g = GroupFile::parse("# comment\nadmins: alice bob\n\nops:alice\nadmins: carol\r\n")
            .unwrap();
        assert_eq!(g.groups_of("alice"), ["admins", "ops"]);
        assert_eq!(g.groups_of("carol"), ["admins"]);
        assert!(g.groups_of("mallory").is_empty());
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let e = GroupFile::parse("admins: alice\nbroken line\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(GroupFile::parse("bad group: alice").is_err());
    }
}
