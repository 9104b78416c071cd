package config

// LoadServerWithResolver is LoadServer with the resolver --discovery-srv uses.
var LoadServerWithResolver = loadServer
