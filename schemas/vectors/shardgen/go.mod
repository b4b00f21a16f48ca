module userstatus/shardgen

go 1.21
