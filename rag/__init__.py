"""The RAG pipeline above the libraries it joins: retrieve -> tokens -> assemble -> generate -> post-process."""
