"""A word count: the smallest streaming job that exercises mapper, combiner, reducer and the
shuffle. The foundation's proof that jobs run inline, locally and on YARN."""

from mrjob.job import MRJob


class MRSmoke(MRJob):
    def mapper(self, _, line):
        for word in line.split():
            yield word.lower(), 1

    def combiner(self, word, counts):
        yield word, sum(counts)

    def reducer(self, word, counts):
        yield word, sum(counts)


if __name__ == "__main__":
    MRSmoke.run()
