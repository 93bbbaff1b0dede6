//! stylus-retriever
