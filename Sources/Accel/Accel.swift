public enum AccelPlaceholder {}
