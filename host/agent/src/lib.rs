//! The agent (`molt agent`): version check, Pre Upgrade Check, Download, Extract.
