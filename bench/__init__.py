"""The mshare benchmark suite: mshare against its peers, same run, ratios. See README.md."""
